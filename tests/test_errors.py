"""Bad input ends in one clear line on stderr and a non-zero exit, never a traceback."""

import json
import shutil

import pytest

import dglm
from dglm.cli import main
from dglm.errors import DglmError


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expect_error(capsys, pattern, *args):
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dglm: error: "), err
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def broken_copy(tiny_checkpoint, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, folder)
    return folder


def test_unknown_attribute_lists_the_known_ones(capsys, tiny_checkpoint, toy_plugin):
    line = expect_error(capsys, "unknown attribute 'mood'", "generate", "Hi", "--model", str(tiny_checkpoint), "--attr", "mood=happy")
    assert "toy_sentiment" in line


def test_unknown_label_lists_the_labels(capsys, tiny_checkpoint, toy_plugin):
    line = expect_error(capsys, "unknown label 'neutral'", "generate", "Hi", "--model", str(tiny_checkpoint),
                        "--attr", "toy_sentiment=neutral")
    assert "negative, positive" in line


def test_weight_must_be_a_number(capsys, tiny_checkpoint):
    expect_error(capsys, "is not a number", "generate", "Hi", "--model", str(tiny_checkpoint), "--attr", "toy_sentiment=positive:high")


def test_empty_prefix(capsys, tiny_checkpoint):
    expect_error(capsys, "empty", "generate", "   ", "--model", str(tiny_checkpoint))


def test_zero_samples(capsys, tiny_checkpoint):
    expect_error(capsys, "num_samples must be an integer from 1 to 10000, got 0", "generate", "Hi", "-n", "0", "--model", str(tiny_checkpoint))


@pytest.mark.parametrize("flag, accepted", [("--max-new-tokens", ">= 1"), ("--steps", "in [1, 1000]")])
def test_zero_tokens_or_steps(capsys, tiny_checkpoint, flag, accepted):
    expect_error(capsys, f"must be an integer {accepted}, got 0", "generate", "Hi", flag, "0", "--model", str(tiny_checkpoint))


def test_negative_temperature(capsys, tiny_checkpoint):
    expect_error(capsys, "temperature must be a number >= 0, got -1.0", "generate", "Hi", "--temperature=-1", "--model",
                 str(tiny_checkpoint))


def test_missing_checkpoint(capsys, tmp_path):
    expect_error(capsys, "does not exist", "generate", "Hi", "--model", str(tmp_path / "nowhere"))


def test_corrupt_weights(capsys, broken_copy):
    (broken_copy / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    expect_error(capsys, "is corrupt", "generate", "Hi", "--model", str(broken_copy))


def test_corrupt_config(capsys, broken_copy):
    (broken_copy / "config.json").write_text("{not json")
    expect_error(capsys, "is not valid JSON", "generate", "Hi", "--model", str(broken_copy))


def test_weights_that_do_not_match_the_config(capsys, broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["denoiser"]["layers"] = 3
    (broken_copy / "config.json").write_text(json.dumps(config))
    expect_error(capsys, "does not match its config.json", "generate", "Hi", "--model", str(broken_copy))


def test_encoder_dimension_mismatch(capsys, broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["latent_dim"] = 64
    (broken_copy / "config.json").write_text(json.dumps(config))
    expect_error(capsys, "expects a 64-d encoder", "generate", "Hi", "--model", str(broken_copy))


def test_unknown_model_name_says_what_to_install(capsys, broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["encoder"] = str(broken_copy / "no-such-encoder")
    (broken_copy / "config.json").write_text(json.dumps(config))
    line = expect_error(capsys, "could not load encoder", "generate", "Hi", "--model", str(broken_copy))
    assert "all-MiniLM-L6-v2" in line


def test_probe_trained_on_another_encoder(capsys, tiny_checkpoint):
    """The built-in sentiment probe was trained on the real encoder, not the tiny test one."""
    expect_error(capsys, "was trained on encoder 'all-MiniLM-L6-v2'", "generate", "Hi", "--model", str(tiny_checkpoint),
                 "--attr", "sentiment=positive")


def test_min_p_out_of_range(capsys, tiny_checkpoint):
    expect_error(capsys, "min_p must be a number in [0, 1), got 1.0", "generate", "Hi", "--min-p", "1", "--model", str(tiny_checkpoint))


def test_help_teaches_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--prefix-file", "--attr", "-n", "--max-new-tokens", "--seed", "--guidance-scale", "--steps", "--min-p", "--format", "--model"):
        assert flag in text


@pytest.mark.parametrize("content, pattern", [
    (b"", "has no prefix: every line is empty"),
    (b"  \n\t\n", "has no prefix: every line is empty"),
    (b"\xff\xfe\x00binary", "looks binary (a NUL byte on line 1, counting from 1)"),
    (b"The film\ncaf\xe9\n", "is not UTF-8 text (line 2, counting from 1; byte 3)"),
])
def test_prefix_files_that_are_empty_or_not_text(capsys, tiny_checkpoint, tmp_path, content, pattern):
    path = tmp_path / "prefixes.txt"
    path.write_bytes(content)
    expect_error(capsys, pattern, "generate", "--prefix-file", str(path), "--model", str(tiny_checkpoint))


def test_a_missing_prefix_file(capsys, tiny_checkpoint, tmp_path):
    expect_error(capsys, "does not exist", "generate", "--prefix-file", str(tmp_path / "none.txt"), "--model", str(tiny_checkpoint))


@pytest.mark.parametrize("args, message", [
    (["--attr", "mood=happy"], "unknown attribute 'mood'; known attributes: "),
    (["--attr", "sentiment=happy"], "unknown label 'happy' for attribute 'sentiment'"),
    (["-n", "0"], "num_samples must be an integer from 1 to 10000, got 0"),
    (["--temperature=-1"], "temperature must be a number >= 0"),
    (["--sampler", "euler"], "unknown sampler 'euler'"),
    (["--guidance-mode", "nearest"], "unknown guidance mode 'nearest'"),
])
def test_checks_that_need_no_model_come_before_the_model_loads(capsys, tmp_path, args, message):
    """The model named does not exist, so an error about the inputs shows they were checked before loading it."""
    expect_error(capsys, message, "generate", "Hi", "--model", str(tmp_path / "no-such-model"), *args)


@pytest.mark.parametrize("args, message", [
    (["   "], "prefix 0 (counting from 0) is empty; every prefix needs some text to continue"),
    (["The \udcff movie"], "prefix 0 (counting from 0) is not valid text: the byte 0xff at character 4 is not UTF-8"),
    (["Hi", "-n", "99999999999"], "num_samples must be an integer from 1 to 10000, got 99999999999"),
    (["Hi", "--batch-size", "100000"], "batch_size must be an integer from 1 to 4096, got 100000"),
    (["Hi", "--toward", ""], "a phrase (--toward / --away, or a request's {\"text\": ...}) must be non-empty text"),
    (["Hi", "--away", "a storm \udcfe"], "a phrase (--toward / --away, or a request's {\"text\": ...}) is not valid text: "
                                         "the byte 0xfe at character 8 is not UTF-8"),
    (["Hi", "--attr", "sentiment=pos\udcffitive"], "the label of attribute 'sentiment' is not valid text"),
    (["Hi", "--stop", "\udcff"], "is not valid text: the byte 0xff at character 0 is not UTF-8"),
    (["Hi", "--device", "gpu"], "device 'gpu' is not one torch knows; give cpu, cuda or cuda:N"),
    (["Hi", "--device", "cuda:7"], "device 'cuda:7': this machine has "),  # none, or fewer than eight
])
def test_bad_text_and_counts_are_refused_in_one_line_before_the_model_loads(capsys, tmp_path, args, message):
    expect_error(capsys, message, "generate", *args, "--model", str(tmp_path / "no-such-model"))


def test_a_folder_given_as_prefix_file_is_named_a_folder_before_the_model_loads(capsys, tmp_path):
    expect_error(capsys, f"prefix file {tmp_path} is a folder; give a text file with one prefix a line", "generate",
                 "--prefix-file", str(tmp_path), "--model", str(tmp_path / "no-such-model"))


@pytest.mark.slow
def test_bytes_that_are_not_utf8_in_an_argument_end_in_one_line(tmp_path):
    import subprocess
    import sys

    ran = subprocess.run([sys.executable.encode(), b"-m", b"dglm", b"generate", b"The \xff movie", b"--model",
                          str(tmp_path).encode()], capture_output=True, timeout=120, check=False)
    assert ran.returncode == 2 and ran.stderr.decode().strip().splitlines() == [
        "dglm: error: prefix 0 (counting from 0) is not valid text: the byte 0xff at character 4 is not UTF-8; give UTF-8 text"]


def test_version_and_plugins_as_json(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"dglm {version('dglm')}"
    assert dglm.__version__ == version("dglm")  # read from the installed distribution, not written twice
    assert main(["plugins", "--json"]) == 0
    plugins = json.loads(capsys.readouterr().out)
    assert any("sentiment" in p["attributes"] for p in plugins) and {"name", "version", "hooks"} <= plugins[0].keys()


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly():
    import subprocess
    import sys

    reader = subprocess.run(f"{sys.executable} -m dglm attributes | head -c 5", shell=True, capture_output=True, text=True,
                            timeout=120)
    assert len(reader.stdout) == 5 and "Traceback" not in reader.stderr and "BrokenPipe" not in reader.stderr


def test_threads_sets_torchs_threads_and_refuses_nonsense(tiny_checkpoint):
    import torch

    from dglm.pipeline import Pipeline

    before = torch.get_num_threads()
    try:
        Pipeline.from_pretrained(str(tiny_checkpoint), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(DglmError, match="threads must be a positive integer"):
        Pipeline.from_pretrained(str(tiny_checkpoint), threads=0)

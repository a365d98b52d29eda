"""Every bad input to run_lecture.py gets a short answer before any work starts: through the real command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from celeba_vae.checkpoint import save_checkpoint
from celeba_vae.synthetic import write_synthetic_celeba
from model import VAE

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, code: str | None = None) -> tuple[int, str]:
    """Run ``python run_lecture.py ARGS`` (or ``python -c CODE``) and return its exit code and all it printed."""
    command = [sys.executable, "-c", code] if code else [sys.executable, str(REPO / "run_lecture.py"), *args]
    done = subprocess.run(command, check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return done.returncode, done.stdout + done.stderr


def assert_short_answer(result: tuple[int, str], *expected: str, code: int = 2) -> None:
    returncode, output = result
    assert returncode == code, output
    assert "Traceback" not in output, output
    assert len(output.strip().splitlines()) <= 12, output
    for text in expected:
        assert text in output, output


@pytest.mark.parametrize(("args", "expected"), [
    (["--epochs", "0"], ["--epochs", "0 must be at least 1"]),
    (["--batch-size", "0"], ["--batch-size", "0 must be at least 1"]),
    (["--batch-size", "abc"], ["--batch-size", "'abc' is not a whole number"]),
    (["--train-images", "-5"], ["--train-images", "-5 must be at least 1"]),
    (["--learning-rate", "-1"], ["--learning-rate", "positive number"]),
    (["--learning-rate", "fast"], ["--learning-rate", "'fast' is not a number"]),
    (["--seed", "-1"], ["--seed", "-1 must be at least 0"]),
    (["--device", "gpu"], ["--device gpu"]),
    (["--device", "cuda"], ["--device cuda", "CUDA is not available"]),
])
def test_bad_arguments(args: list[str], expected: list[str], tmp_path: Path) -> None:
    if args[:2] == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_short_answer(cli(*args, "--output-dir", str(tmp_path / "out")), *expected)
    assert not (tmp_path / "out" / "notebooks").exists()


def test_missing_data_folder(tmp_path: Path) -> None:
    assert_short_answer(cli("--data-root", str(tmp_path / "nowhere")), str(tmp_path / "nowhere"), "does not exist")


def test_empty_data_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    assert_short_answer(cli("--data-root", str(tmp_path / "data")), "CelebA was not found", "img_align_celeba")


def test_half_extracted_data_folder(celeba_copy: Path) -> None:
    images = sorted((celeba_copy / "celeba" / "img_align_celeba").iterdir())
    for image in images[len(images) // 2:]:
        image.unlink()
    assert_short_answer(cli("--data-root", str(celeba_copy)), "missing from", "list_eval_partition.txt")


def test_zip_that_is_a_web_page(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "celeba"
    folder.mkdir(parents=True)
    (folder / "img_align_celeba.zip").write_text("<!DOCTYPE html><html><title>Google Drive - quota</title></html>")
    assert_short_answer(cli("--data-root", str(tmp_path / "data")), "img_align_celeba.zip", "web page")


def test_unreadable_data_folder(celeba_copy: Path) -> None:
    """As root nothing is unreadable, so the process raises the PermissionError the OS would give a user."""
    code = (
        "import os, sys, run_lecture\n"
        "real = os.scandir\n"
        f"target = {str(celeba_copy)!r}\n"
        "def scandir(path='.'):\n"
        "    if str(path).startswith(target):\n"
        "        raise PermissionError(13, 'Permission denied', str(path))\n"
        "    return real(path)\n"
        "os.scandir = scandir\n"
        f"sys.exit(run_lecture.main(['--data-root', target]))\n"
    )
    assert_short_answer(cli(code=code), str(celeba_copy), "ermission")


def test_resume_with_nothing_to_resume(celeba_root: Path, tmp_path: Path) -> None:
    assert_short_answer(cli("--data-root", str(celeba_root), "--output-dir", str(tmp_path / "out"), "--resume"),
                        "no checkpoint to resume", str(tmp_path / "out" / "transpose" / "checkpoint.pt"))


def test_resume_from_another_model(celeba_root: Path, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "out" / "transpose" / "checkpoint.pt", VAE(decoder="nearest"), epoch=1)
    assert_short_answer(cli("--data-root", str(celeba_root), "--output-dir", str(tmp_path / "out"), "--resume"),
                        "decoder='nearest'", "checkpoint.pt")


def test_resume_on_other_data(celeba_root: Path, tmp_path: Path) -> None:
    data = {"kind": "synthetic", "layout": "torchvision", "root": str(tmp_path / "synthetic"), "images": 1600}
    save_checkpoint(tmp_path / "out" / "transpose" / "checkpoint.pt", VAE(), epoch=1, settings={"data": data})
    assert_short_answer(cli("--data-root", str(celeba_root), "--output-dir", str(tmp_path / "out"), "--resume"),
                        "synthetic", str(celeba_root))


def test_corrupt_checkpoint(celeba_root: Path, tmp_path: Path) -> None:
    path = tmp_path / "out" / "transpose" / "checkpoint.pt"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 half a checkpoint")
    assert_short_answer(cli("--data-root", str(celeba_root), "--output-dir", str(tmp_path / "out"), "--resume"),
                        str(path), "corrupted")


def test_output_folder_that_cannot_be_written(celeba_root: Path, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert_short_answer(cli("--data-root", str(celeba_root), "--output-dir", str(tmp_path / "a-file" / "out")),
                        "cannot write to the output folder", "--output-dir")


def test_notebook_failing_half_way_is_summarized(tmp_path: Path) -> None:
    root = write_synthetic_celeba(tmp_path / "data", num_images=30, seed=3)
    victim = root / "celeba" / "img_align_celeba" / "000002.jpg"
    victim.write_bytes(victim.read_bytes()[:200])
    out = tmp_path / "out"
    returncode, output = cli("--data-root", str(root), "--output-dir", str(out), "--epochs", "1", "--device", "cpu")
    executed = out / "notebooks" / "1_train_vae_transpose.ipynb"
    assert returncode == 1 and "Traceback" not in output, output
    errors = output[output.index("run_lecture.py: "):]
    assert len(errors.strip().splitlines()) <= 4, errors
    assert "1_train_vae.ipynb failed in cell" in errors and "000002.jpg" in errors and str(executed) in errors
    assert "Traceback" in executed.read_text() or "traceback" in executed.read_text()


def test_without_celeba_the_runner_and_the_notebooks_say_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import helper_data
    import run_lecture
    from helper_setup import start_notebook

    (tmp_path / "data").mkdir()
    monkeypatch.setenv("CELEBA_VAE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(helper_data, "ATTACHED_DATASETS", (tmp_path / "kaggle",))
    given: list[dict[str, object]] = []
    monkeypatch.setattr(run_lecture, "run_notebook", lambda notebook, out, parameters: given.append(parameters))
    args = ["--output-dir", str(tmp_path / "out"), "--device", "cpu", "--num-synthetic", "10"]
    assert run_lecture.main(args) == 0
    runner_said = capsys.readouterr().out
    assert "CelebA was NOT found" in runner_said and str(tmp_path / "kaggle") in runner_said
    assert {p["dataset"] for p in given} == {"auto"} and {p["data_root"] for p in given} == {str(tmp_path / "data")}
    first = given[0]
    start_notebook(dataset=first["dataset"], data_root=first["data_root"], output_dir=first["output_dir"], device="cpu",
                   random_seed=first["random_seed"], num_synthetic=first["num_synthetic"])
    notebook_said = capsys.readouterr().out
    banner = notebook_said[:notebook_said.rindex("=" * 100) + 100]
    assert banner.count("=" * 100) == 2 and banner in runner_said


@pytest.mark.parametrize(("device", "asked", "trained"), [
    ("cuda", None, ["transpose", "nearest"]), ("cpu", None, ["transpose"]), ("mps", None, ["transpose"]),
    ("cuda", "transpose", ["transpose"]), ("cpu", "both", ["transpose", "nearest"]),
])
def test_on_a_cuda_gpu_both_decoders_are_trained_as_in_the_lecture_elsewhere_one_saying_why(
    device: str, asked: str | None, trained: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import run_lecture

    given: list[tuple[str, object]] = []
    monkeypatch.setattr(run_lecture, "choose_device", lambda name: torch.device(device))
    monkeypatch.setattr(run_lecture, "run_notebook",
                        lambda notebook, out, parameters: given.append((notebook, parameters.get("decoder"))))
    args = ["--dataset", "synthetic", "--num-synthetic", "10", "--data-root", str(tmp_path / "data"),
            "--output-dir", str(tmp_path / "out"), *(["--decoder", asked] if asked else [])]
    assert run_lecture.main(args) == 0
    assert [decoder for notebook, decoder in given if notebook == run_lecture.TRAIN] == trained
    assert {decoder for notebook, decoder in given if notebook == run_lecture.ARITHMETIC} == set(trained)
    printed = capsys.readouterr().out
    if asked is None and device == "cuda":
        assert "Decoders: transpose and nearest, as the lecture trained both" in printed, printed
    elif asked is None:
        assert f"Decoder: transpose (on the {device.upper()} both would take twice as long" in printed, printed
        assert "--decoder both trains both" in printed, printed
    else:
        assert "Decoder" not in printed, printed


def test_help_and_argument_errors_load_no_heavy_library() -> None:
    """--help and a bad argument answer before torch, papermill, scikit-learn or a helper module is imported."""
    code = ("import sys, run_lecture\n"
            "for argv in (['--help'], ['--epochs', '0'], ['--knobs', 'colour']):\n"
            "    try:\n"
            "        run_lecture.main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "heavy = {'torch', 'papermill', 'sklearn', 'model'} | {m for m in sys.modules if m.startswith('helper_')}\n"
            "print('loaded:', sorted(heavy & set(sys.modules)))\n")
    returncode, output = cli(code=code)
    assert returncode == 0 and "loaded: []" in output, output
    assert "latent_dim" in output and "invalid choice: 'colour'" in output


def test_the_runners_knob_names_are_notebook_5s() -> None:
    import helper_knobs
    from celeba_vae.recipes import KNOB_NAMES, KNOB_VALUES

    assert tuple(KNOB_VALUES) == KNOB_NAMES and helper_knobs.KNOB_VALUES is KNOB_VALUES  # one source: recipes
    assert [run.changed_knob for run in helper_knobs.knob_grid()[1:]] == [
        knob for knob in KNOB_NAMES for _ in KNOB_VALUES[knob][1:]]


def test_self_check_gets_the_lectures_training_step_and_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import helper_train
    import run_lecture
    from celeba_vae import selfcheck

    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(selfcheck, "run_self_check", lambda *args: calls.append(args) or False)
    assert run_lecture.main(["--self-check", "--device", "cpu"]) == 1
    assert calls == [(helper_train.train_vae_v1, torch.device("cpu"), helper_train.adam)]

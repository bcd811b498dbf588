"""Crash safety of `lavt train`, proven with real processes and real signals.

- A run SIGKILLed in the middle of an epoch, then resumed with `--resume auto`, ends with
  exactly the weights and optimiser state of an uninterrupted run (torch.equal on every
  tensor); the same when the kill lands inside a checkpoint write (between the temporary
  file and its rename, held there by the `LAVT_TEST_PAUSE_CHECKPOINT` hook).
- A watcher thread reads `checkpoint.pt` every few milliseconds while the runs go: every
  version it ever saw loads and passes its content hash, and the file never disappeared.
- A damaged checkpoint is refused ("corrupt checkpoint", pointing to `checkpoint.prev.pt`);
  one written before hashes were recorded still loads.
- A full disk during a checkpoint write, a non-finite loss and Ctrl-C each stop the run with
  one line on stderr and keep the last good checkpoint loadable.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from helpers import TINY_MODEL, make_synth, make_tiny_text_encoder, poison_loss, tiny_train_config
from lavt.cli import main
from lavt.engine import checkpoint as ckpt_io
from lavt.engine.train import train
from lavt.errors import LAVTUserError

pytestmark = pytest.mark.usefixtures("one_thread")

# Three epochs of three steps, drop path on (the resumed run must restore the random
# streams) and gradient accumulation (total batch 4 in micro-batches of 2).
RUN = dict(epochs=3, steps_per_epoch=3, val_max_images=1, micro_batch_size=2, model_overrides={**TINY_MODEL, "drop_path_rate": 0.2})
TIMEOUT = 240


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("crash")
    return {"data": make_synth(base / "data"), "text": make_tiny_text_encoder(base / "tinybert"), "base": base}


@pytest.fixture(scope="module")
def reference(env: dict[str, Path]) -> Path:
    """The uninterrupted run every interrupted one must end equal to (one thread, like the
    killed runs and their resumptions: the same kernels, the same rounding)."""
    out = env["base"] / "reference"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_train_config(env["data"], env["text"], out, **RUN))
    finally:
        torch.set_num_threads(threads)
    return out


def _config_file(env: dict[str, Path], name: str, **overrides) -> tuple[Path, Path]:
    out = env["base"] / name
    path = env["base"] / f"{name}.json"
    path.write_text(json.dumps(tiny_train_config(env["data"], env["text"], out, **{**RUN, **overrides}).to_dict()))
    return path, out


def _start(config: Path, log: Path, **extra_env: str) -> subprocess.Popen:
    """`lavt train --config` in its own session, single-threaded, stderr to `log`."""
    proc_env = {**os.environ, "OMP_NUM_THREADS": "1", **extra_env}
    with open(log, "wb") as err:
        # SIGINT back to its default: a shell starts background jobs (a CI script's `&`) with it
        # ignored, children inherit that, and Python then installs no KeyboardInterrupt handler
        return subprocess.Popen([sys.executable, "-m", "lavt", "train", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err, env=proc_env, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, ready, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"lavt train ended (exit {proc.returncode}) before the point to interrupt it:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"lavt train did not reach the point to interrupt it in {TIMEOUT} s")
        time.sleep(0.005)


def _logged_step(out: Path, step: int):
    """True once log.jsonl holds the training record of optimiser step `step`."""
    def ready() -> bool:
        try:
            lines = (out / "log.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return False
        return any(f'"step": {step},' in line and '"event": "train"' in line for line in lines)
    return ready


def _records(out: Path) -> list[dict]:
    records = []
    for line in (out / "log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line the kill cut short
    return records


class Watcher(threading.Thread):
    """Reads every version of a file it can see, polling every millisecond or so; what it
    read is checked afterwards (loading here would slow the polling)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.versions, self.vanished = path, {}, False
        self.done = threading.Event()

    def run(self) -> None:
        seen = False
        while not self.done.is_set():
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    key = (st.st_ino, st.st_mtime_ns, st.st_size)
                    if key not in self.versions:
                        self.versions[key] = f.read()
                seen = True
            except FileNotFoundError:
                self.vanished |= seen
            time.sleep(0.001)

    def stop(self) -> None:
        self.done.set()
        self.join()

    def epochs(self, scratch: Path) -> list[int]:
        """Load every version seen (format, weights_only, content hash): their epochs."""
        epochs = []
        for i, data in enumerate(self.versions.values()):
            copy = scratch / f"seen{i}.pt"
            copy.write_bytes(data)
            epochs.append(ckpt_io.load_checkpoint(copy)["epoch"])
        return sorted(epochs)


def _assert_same_state(run: Path, reference: Path) -> None:
    a = ckpt_io.load_checkpoint(reference / ckpt_io.CHECKPOINT_NAME)
    b = ckpt_io.load_checkpoint(run / ckpt_io.CHECKPOINT_NAME)
    assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"]) == (2, 9)
    assert a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert len(a["optimizer"]["state"]) == len(b["optimizer"]["state"]) > 0
    for i, s in a["optimizer"]["state"].items():
        for k, v in s.items():
            assert torch.equal(v, b["optimizer"]["state"][i][k]), (i, k)
    assert a["lr_scheduler"] == b["lr_scheduler"] and a["history"][-1]["val"] == b["history"][-1]["val"]
    assert ckpt_io.content_hash(a["rng"]) == ckpt_io.content_hash(b["rng"])  # python, numpy and torch streams


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(env: dict[str, Path], reference: Path, tmp_path: Path) -> None:
    config, out = _config_file(env, "killed")
    watcher = Watcher(out / ckpt_io.CHECKPOINT_NAME)
    watcher.start()
    try:
        proc = _start(config, env["base"] / "killed.err")
        _wait_for(proc, _logged_step(out, 5), env["base"] / "killed.err")  # epoch 2, step 2 of 3
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        records = _records(out)
        assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1]  # killed inside epoch 2
        assert max(r["step"] for r in records if r["event"] == "train") in (5, 6)
        assert ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME)["global_step"] == 3

        assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    finally:
        watcher.stop()
    _assert_same_state(out, reference)
    assert [r["event"] for r in _records(out)].count("resume") == 1
    assert not watcher.vanished
    assert watcher.epochs(tmp_path) == [0, 1, 2]  # one version per epoch, every one complete


def test_sigkill_during_checkpoint_write_then_resume_equals_uninterrupted(env: dict[str, Path], reference: Path,
                                                                           tmp_path: Path) -> None:
    # With a data-loading worker (the reference has none): its seeds come from the restored torch stream.
    config, out = _config_file(env, "killed_writing", num_workers=1)
    watcher = Watcher(out / ckpt_io.CHECKPOINT_NAME)
    watcher.start()
    try:
        proc = _start(config, env["base"] / "killed_writing.err", **{ckpt_io.PAUSE_ENV: "2"})  # epoch 2's write
        _wait_for(proc, (out / f".{ckpt_io.CHECKPOINT_NAME}.paused").is_file, env["base"] / "killed_writing.err")
        proc.send_signal(signal.SIGKILL)
        proc.wait(TIMEOUT)
        # Killed with epoch 2's checkpoint complete on disk but not yet renamed into place.
        left = sorted(p.name for p in out.glob(f".{ckpt_io.CHECKPOINT_NAME}.*.tmp"))
        assert len(left) == 1, left
        assert ckpt_io.load_checkpoint(out / left[0])["epoch"] == 1
        assert ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME)["epoch"] == 0

        assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    finally:
        watcher.stop()
    _assert_same_state(out, reference)
    assert not list(out.glob(f".{ckpt_io.CHECKPOINT_NAME}.*"))  # the resumed run cleared what the kill left
    assert not watcher.vanished
    assert watcher.epochs(tmp_path) == [0, 1, 2]
    assert ckpt_io.load_checkpoint(out / "checkpoint.prev.pt")["epoch"] == 1


def test_previous_checkpoint_is_kept_and_a_damaged_one_is_refused(env: dict[str, Path], reference: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    run = env["base"] / "damaged"
    shutil.copytree(reference, run)
    ckpt, prev = run / ckpt_io.CHECKPOINT_NAME, run / "checkpoint.prev.pt"
    assert ckpt_io.load_checkpoint(prev)["epoch"] == 1 and ckpt_io.load_checkpoint(ckpt)["epoch"] == 2

    # A value changed after writing (the hash no longer matches).
    state = ckpt_io.load_checkpoint(ckpt)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel())
    state["model"][name].view(-1)[0] += 1e-3
    torch.save(state, ckpt)
    where, before = re.escape(str(ckpt)), re.escape(str(prev))
    with pytest.raises(LAVTUserError, match=rf"corrupt checkpoint {where}: .*; the previous one is at {before}"):
        ckpt_io.load_checkpoint(ckpt)
    with pytest.raises(LAVTUserError, match="corrupt checkpoint"):
        from lavt.loading import load_model

        load_model(ckpt)
    config = env["base"] / "damaged.json"
    config.write_text(json.dumps(tiny_train_config(env["data"], env["text"], run, resume="auto", **RUN).to_dict()))
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: corrupt checkpoint {ckpt}") and len(err.strip().splitlines()) == 1 and "Traceback" not in err

    # Bytes flipped inside a tensor's record on disk.
    shutil.copy(reference / ckpt_io.CHECKPOINT_NAME, ckpt)
    with zipfile.ZipFile(ckpt) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(ckpt, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        at = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(LAVTUserError, match=rf"{where}.*the previous one is at {before}"):
        ckpt_io.load_checkpoint(ckpt)

    # Written before checkpoints carried a hash: read as it is.
    state = ckpt_io.load_checkpoint(reference / ckpt_io.CHECKPOINT_NAME)
    del state["sha256"]
    torch.save(state, ckpt)
    assert "sha256" not in ckpt_io.load_checkpoint(ckpt)


def _one_line(err: str, start: str) -> str:
    assert err.startswith(start) and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_full_disk_keeps_the_previous_checkpoint(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    config, out = _config_file(env, "full_disk", epochs=2, steps_per_epoch=2, val_split=None)
    real_save, writes = torch.save, []

    def full_disk(obj, f, *args, **kwargs):  # noqa: ANN001
        if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
            writes.append(obj["epoch"])
            if len(writes) == 2:  # the disk fills up part-way through epoch 2's checkpoint
                f.write(b"\0" * 4096)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    ckpt = out / ckpt_io.CHECKPOINT_NAME
    assert main(["train", "--config", str(config)]) == 2
    err = _one_line(capsys.readouterr().err, f"error: could not write the checkpoint of epoch 2 in {out}: no space left on the device")
    assert f"the last good checkpoint {ckpt} (after epoch 1) is intact and loadable" in err and "--resume auto" in err
    assert writes == [0, 1]
    assert ckpt_io.load_checkpoint(ckpt)["epoch"] == 0
    assert not list(out.glob(f".{ckpt_io.CHECKPOINT_NAME}.*"))  # the partial file is gone

    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run goes on from epoch 1
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    assert ckpt_io.load_checkpoint(ckpt)["epoch"] == 1


def test_non_finite_loss_names_the_step_and_keeps_the_checkpoint(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    poison_loss(monkeypatch, float("inf"), at_call=4)
    config, out = _config_file(env, "diverged", epochs=2, steps_per_epoch=3, val_split=None, micro_batch_size=None)
    assert main(["train", "--config", str(config)]) == 2
    err = _one_line(capsys.readouterr().err, "error: the loss became non-finite at epoch 2, step 1 of the epoch (optimiser step 4)")
    assert f"The last good checkpoint is {out / ckpt_io.CHECKPOINT_NAME}" in err
    assert ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME)["global_step"] == 3


def _interrupt(env: dict[str, Path], name: str, sig: int, exit_code: int, words: str) -> tuple[Path, Path]:
    """Start a 12-epoch run, send `sig` once optimiser step 5 is logged (epoch 2; the epochs
    after it keep the run going whatever the machine's load), and check the one line it
    leaves: where it stopped, the last good checkpoint (the epoch before) and how to go on."""
    config, out = _config_file(env, name, epochs=12)
    log = env["base"] / f"{name}.err"
    proc = _start(config, log)
    _wait_for(proc, _logged_step(out, 5), log)
    proc.send_signal(sig)
    assert proc.wait(TIMEOUT) == exit_code
    err = _one_line(log.read_text(), f"interrupted: training stopped {words}at epoch ")
    epoch = int(re.search(r"stopped .*at epoch (\d+), optimiser step", err).group(1))
    assert epoch >= 2
    saved = ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME)
    assert saved["epoch"] == epoch - 2 and saved["global_step"] == 3 * (epoch - 1)  # "epoch" counts from 0
    assert f"the last good checkpoint is {out / ckpt_io.CHECKPOINT_NAME} (after epoch {epoch - 1})" in err and "--resume auto" in err
    assert not list(out.glob(f".{ckpt_io.CHECKPOINT_NAME}.*"))
    return config, out


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(env: dict[str, Path]) -> None:
    _interrupt(env, "ctrl_c", signal.SIGINT, 130, "")


def test_sigterm_stops_as_ctrl_c_does_then_resumes(env: dict[str, Path]) -> None:
    """A scheduler's SIGTERM (preemption): exit 143 with Ctrl-C's message and the last
    checkpoint whole; `--resume auto` then finishes the run (the SIGKILL tests above show
    that a resumed run ends equal to an uninterrupted one)."""
    config, out = _interrupt(env, "sigterm", signal.SIGTERM, 143, "by SIGTERM ")
    assert main(["train", "--config", str(config), "--resume", "auto"]) == 0
    assert ckpt_io.load_checkpoint(out / ckpt_io.CHECKPOINT_NAME)["epoch"] == 11


def test_a_log_line_cut_by_a_kill_does_not_swallow_the_next_record(tmp_path: Path) -> None:
    from lavt.engine.runlog import RunLog

    (tmp_path / "log.jsonl").write_text('{"event": "train", "step": 1}\n{"event": "tra')
    log = RunLog(tmp_path, enabled=True, tensorboard=False)
    log({"event": "resume", "step": 1})
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert lines[1] == '{"event": "tra' and json.loads(lines[2]) == {"event": "resume", "step": 1}


def test_previous_checkpoint_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(src, dst):  # noqa: ANN001 - a filesystem that refuses hard links (some network and FAT mounts)
        raise OSError(errno.EPERM, "hard links are not supported")

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / ckpt_io.CHECKPOINT_NAME
    for epoch in (0, 1):
        ckpt_io.save_training_checkpoint({"format": ckpt_io.FORMAT, "version": 1, "epoch": epoch, "w": torch.arange(3.0) + epoch}, path)
    assert ckpt_io.load_checkpoint(path)["epoch"] == 1
    prev = ckpt_io.load_checkpoint(tmp_path / "checkpoint.prev.pt")
    assert prev["epoch"] == 0 and torch.equal(prev["w"], torch.arange(3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


def test_a_kill_between_the_model_folder_renames_loses_nothing(tmp_path: Path) -> None:
    """`save_model_folder` swaps model_best/ by two renames; a kill between them leaves the
    previous folder as .model_best.old and a new one as .model_best.tmp. The next run's start
    puts the previous one back (never deletes it) and drops the half-written one."""
    from helpers import tiny_config
    from lavt.models import LAVT

    torch.manual_seed(0)
    run = tmp_path / "run"
    best = ckpt_io.save_model_folder(LAVT(tiny_config()), run / ckpt_io.BEST_DIR)
    before = {p.name: p.read_bytes() for p in best.iterdir()}
    os.replace(best, run / f".{ckpt_io.BEST_DIR}.old")  # the first rename, then the kill
    (run / f".{ckpt_io.BEST_DIR}.tmp").mkdir()
    (run / f".{ckpt_io.BEST_DIR}.tmp" / "config.json").write_text("{")  # half written
    ckpt_io.remove_stale_temporaries(run)
    assert {p.name: p.read_bytes() for p in best.iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == [ckpt_io.BEST_DIR]
    ckpt_io.remove_stale_temporaries(run)  # nothing to do: the folder in place is left alone
    assert {p.name: p.read_bytes() for p in best.iterdir()} == before

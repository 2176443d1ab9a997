"""The one Accelerate training loop (lensblur_models.common.train) for the three families.

In one process: bf16 autocast + gradient checkpointing + gradient accumulation + warm-up + EMA +
checkpoints, then a resumed run must reproduce the uninterrupted run's next losses exactly.
Under ``accelerate launch`` (2 CPU processes, gloo, marked slow): the refocusing DiT in
test_refocus_dit.py, the other two families here.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from lensblur_models.common.train import TrainingArgs, TrainTask, latest_checkpoint, train_loop

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
FEATURES = dict(mixed_precision="bf16", gradient_checkpointing=True, gradient_accumulation_steps=2,
                lr_warmup_steps=2, lr_scheduler="cosine", use_ema=True, ema_decay=0.5, checkpointing_steps=2,
                log_every=1, threads=1, batch_size=2)


def refocus_task(steps):
    from lensblur_models.refocus_dit.train import RefocusDiTTask, build_parser

    ns = build_parser().parse_args(["--out", "unused", "--patch", "4", "--scenes", "3", "--steps", str(steps),
                                    "--batch", "2"])
    return RefocusDiTTask(ns)


def bokeh_task(steps):
    from lensblur_models.genrefocus import BokehNet, BokehNetConfig
    from lensblur_models.genrefocus.train import GenRefocusTask, RefocusSamples

    torch.manual_seed(0)
    data = RefocusSamples(64, seed=1, height=8, width=8, max_coc_px=3.0, method="gather")
    return GenRefocusTask(BokehNet.from_config(BokehNetConfig.tiny()), data, save_dir="bokehnet")


def exif_task(steps):
    from lensblur_models.exif_defocus import ExifDefocusConfig, ExifDefocusPipeline, make_focus_dataset
    from lensblur_models.exif_defocus.train import ExifDefocusTask, TensorDataset

    data = make_focus_dataset(8, 16, scene_size=32, seed=3)
    pipe = ExifDefocusPipeline(ExifDefocusConfig.tiny(blur_method="gather"))
    return ExifDefocusTask(pipe, TensorDataset(data, ("aif", "depth", "exif", "target")), "fdt")


SAVED = {"refocus": "model", "bokeh": "bokehnet", "exif": "pipeline"}


@pytest.mark.parametrize("family, make", [("refocus", refocus_task), ("bokeh", bokeh_task), ("exif", exif_task)])
def test_features_and_resume_reproduces_the_next_steps(family, make, tmp_path):
    full = train_loop(make(4), TrainingArgs(output_dir=str(tmp_path / "full"), max_steps=4, **FEATURES),
                      progress=False)
    assert full["step"] == 4 and len(full["losses"]) == 4 and all(l > 0 for l in full["losses"])
    assert latest_checkpoint(tmp_path / "full").name == "checkpoint-4"
    assert (tmp_path / "full" / SAVED[family]).is_dir()
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert log[0]["lr"] < log[1]["lr"] and log[3]["lr"] < log[1]["lr"]  # warm-up, then cosine decay
    # resume from step 2 in a fresh directory: steps 3 and 4 must come out the same
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    os.rename(tmp_path / "full" / "checkpoints" / "checkpoint-2", tmp_path / "resumed" / "checkpoints" / "checkpoint-2")
    resumed = train_loop(make(4), TrainingArgs(output_dir=str(tmp_path / "resumed"), max_steps=4, resume="latest",
                                               **FEATURES), progress=False)
    assert resumed["losses"] == full["losses"][2:]
    assert resumed["param_checksum"] == pytest.approx(full["param_checksum"], rel=1e-6)


def test_ema_and_errors(tmp_path):
    task = bokeh_task(2)
    net = task.net
    plain = train_loop(task, TrainingArgs(output_dir=str(tmp_path / "a"), max_steps=2, log_every=1, threads=1),
                       progress=False)
    assert plain["step"] == 2
    with pytest.raises(ValueError, match="resume"):
        train_loop(bokeh_task(1), TrainingArgs(output_dir=str(tmp_path / "b"), max_steps=1, resume="latest"))
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainingArgs(output_dir="x", mixed_precision="fp8")
    with pytest.raises(TypeError, match="task"):
        train_loop(net, TrainingArgs(output_dir="x"))

    class Frozen(TrainTask):
        def build_model(self):
            return torch.nn.Linear(2, 2).requires_grad_(False)

        def dataset(self):
            return [torch.zeros(2)] * 4

    with pytest.raises(ValueError, match="no trainable"):
        train_loop(Frozen(), TrainingArgs(output_dir=str(tmp_path / "c"), max_steps=1))


def _launch(module_args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", *module_args,
           "--out", str(tmp_path / "run"), "--log-every", "1", "--threads", "1"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / "run" / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["param_checksum"] == pytest.approx(r1["param_checksum"], rel=1e-9, abs=1e-9)  # in sync
    assert r0["losses"] == r1["losses"] and len(r0["losses"]) == 2
    return r0


@pytest.mark.slow
def test_genrefocus_two_cpu_processes(tmp_path):
    _launch(["lensblur_models.genrefocus.train", "--net", "deblur", "--steps", "2", "--batch", "2", "--size", "8",
             "--max-coc", "3"], tmp_path)
    from lensblur_models.genrefocus import DeblurNet

    assert DeblurNet.from_pretrained(tmp_path / "run" / "deblurnet").config.in_channels == 3


@pytest.mark.slow
def test_exif_two_cpu_processes_streaming_photos(tmp_path):
    """Real-photo path: photos with EXIF streamed from disk, depth estimated on the fly, generator LoRA."""
    from PIL import Image, TiffImagePlugin

    from lensblur_models.exif_defocus import make_tiny_depth_model, make_tiny_diffusers_generator

    photos = tmp_path / "photos"
    photos.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(4):
        arr = (torch.rand(24, 36, 3, generator=g) * 255).byte().numpy()
        exif = Image.Exif()
        exif.get_ifd(0x8769).update({0x920A: TiffImagePlugin.IFDRational(50, 1),
                                     0x829D: TiffImagePlugin.IFDRational(2, 1), 0xA405: 50})
        Image.fromarray(arr).save(photos / f"p{i}.jpg", "JPEG", exif=exif)
    gen = make_tiny_diffusers_generator(tmp_path / "gen", size=16)
    depth = make_tiny_depth_model(tmp_path / "depth")
    _launch(["lensblur_models.exif_defocus.train", "--photos", str(photos), "--size", "16", "--generator", str(gen),
             "--depth-model", str(depth), "--preset", "tiny", "--steps", "2", "--batch", "1", "--num-workers", "1"],
            tmp_path)
    from lensblur_models.exif_defocus import ExifDefocusPipeline

    back = ExifDefocusPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert back.generator is not None and back.generator.lora_rank == 4 and back.depth_model.output == "relative"

"""run(config, on_event) — the one run interface every client uses.

    from tunelab import RunConfig, run
    result = run(RunConfig(method="lora"), on_event=print)
    print(result.status, result.run_dir, result.summary["final_loss"])

The story of a run, top to bottom:
  1. validate the config and load the data (both fail fast, before any model loads);
  2. make `runs/<run_id>/` with config.yaml, status.json and events.jsonl;
  3. pick the device and precision (`auto` = bf16 where the hardware has it natively);
  4. let the method module load the model (and its PEFT config);
  5. hand model + data to TRL's SFTTrainer or DPOTrainer, with a callback that turns
     the trainer's logs into our events (callback.py);
  6. save the outputs (adapter or full model, safetensors) and summary.json.
A crash at any point ends with a `fail` event and status "failed", then re-raises.
SIGTERM / SIGINT (or a STOP file in the run folder) set a flag: from the first step the
callback stops at the next step boundary, saves what was learned so far and marks the run
"stopped"; before it, the run looks at the flag between its loading phases and ends as
"cancelled" (stopping.py; the app ends a loading run at once). A run started from the app
stops the same way when the app ends, and is then "interrupted", resumable from its
checkpoint (stopping.watch_app).
"""

from __future__ import annotations

import os
import resource
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TYPE_CHECKING


from .. import data as data_mod
from ..modelio import loading, models
from ..common import cpushare, workspace
from .callback import core_share_callback_class, event_callback_class
from .config import ConfigError, RunConfig
from .checkpoints import CHECKPOINTS_DIR, drop_incomplete, last_checkpoint
from .events import EventWriter
from .parallel import Quiet, is_main_process, shared_run_id, world
from .pace import Pace, batches
from .runfolder import (MODEL_DIR, SUMMARY_FILE, RunError, Status, process_start_time, new_run_id,
                        write_json_atomic)
from .stopping import (LOADING, STOP_FILE, TRAINING, RunSignals, StopRequested, record_app_ended, record_unstarted,
                       stopped_by_app)

if TYPE_CHECKING:   # annotations only: torch is imported where it is used
    import torch


@dataclass
class Hardware:
    device: str             # "cpu" or "cuda"
    precision: str          # "bf16", "fp16" or "fp32" (never "auto")

    @property
    def compute_dtype(self) -> torch.dtype:
        import torch
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str                      # "finished", "stopped" or "cancelled" (stopped before any step);
                                     # "interrupted" when the app that started it ended (stopping.py)
    summary: dict = field(default_factory=dict)
    model: object = field(default=None, repr=False)   # the trained model, still in memory


def resolve_hardware(cfg: RunConfig) -> Hardware:
    import torch
    want = cfg.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no CUDA GPU is available")
    device = "cuda" if want == "cuda" or (want == "auto" and torch.cuda.is_available()) else "cpu"
    precision = cfg.train.precision
    if precision == "auto":   # bf16 where the device has it; else fp16 mixed precision on a GPU (T4, V100)
        precision = "bf16" if loading.bf16_supported(device) else "fp16" if device == "cuda" else "fp32"
    if precision == "fp16" and device == "cpu":
        raise ConfigError("train.precision: fp16 needs a CUDA GPU; on CPU use auto, bf16 or fp32")
    return Hardware(device, precision)


# --- the run ----------------------------------------------------------------------------

def _method(name: str):
    """The module that loads and trains method `name` (config.METHODS), imported when a run needs it."""
    from ..methods import dpo, full, kto, lora, orpo, qlora
    return {"full": full, "lora": lora, "qlora": qlora, "dpo": dpo, "kto": kto, "orpo": orpo}[name]


def _common_args(cfg: RunConfig, hw: Hardware, run_dir: Path, has_eval: bool) -> dict:
    t = cfg.train
    return dict(
        output_dir=str(run_dir / CHECKPOINTS_DIR),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a share of the steps
        weight_decay=t.weight_decay,
        max_length=t.max_length,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if has_eval and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        save_strategy="steps" if t.save_steps else "no",
        save_steps=t.save_steps or 500,
        save_total_limit=2,  # the newest may be half-written when a crash hits
        bf16=hw.precision == "bf16",
        fp16=hw.precision == "fp16",
        use_cpu=hw.device == "cpu",
        seed=t.seed,
        data_seed=t.seed,
        gradient_checkpointing=t.gradient_checkpointing,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def _pace(cfg: RunConfig, eval_rows: int, has_eval: bool) -> Pace:
    """The ETA's model of this run: which steps evaluate and save (as _common_args sets them)."""
    t = cfg.train
    return Pace(t.max_steps, eval_every=t.eval_steps if has_eval else 0, save_every=t.save_steps,
                final_eval=has_eval, eval_batches=batches(eval_rows, t.batch_size), grad_accum=t.grad_accum)


def _sft_trainer(cfg, hw, model, peft_config, tokenizer, train_ds, eval_ds, common_args, callbacks):
    from trl import SFTConfig

    from ..methods.heads import sft_trainer_class  # TRL's SFTTrainer, scoring only the answer tokens
    args = SFTConfig(**common_args, completion_only_loss=cfg.data.completion_only,
                     train_sampling_strategy="group_by_length" if cfg.train.group_by_length else "random")
    return sft_trainer_class()(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                               processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
                               answer_head=cfg.speed.answer_head)


def peak_memory_mb(device: str) -> float:
    """This process's peak memory in MB: allocated on a GPU, its own peak RSS on a CPU."""
    import torch
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    # This process's own peak RSS. Linux carries ru_maxrss over from the parent through
    # fork + exec, so a run started by a process that had grown bigger (the app with chat
    # models loaded, labs/measure.py, a benchmark) reported the parent's peak instead;
    # VmHWM is this process's high-water mark alone.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(config: RunConfig, on_event: Callable[[dict], None] | None = None,
        run_id: str | None = None) -> RunResult:
    """Train with `config.method`; return when done. See the module docstring."""
    cfg = config.validate()
    hw = resolve_hardware(cfg)
    examples = _load_data(cfg)
    models.resolve_model(cfg.model)  # a missing model folder fails here, before any run folder
    run_dir = workspace.runs_dir() / shared_run_id(cfg, run_id, new_run_id)
    if is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.yaml")
    return _execute(cfg, hw, run_dir, examples, on_event, checkpoint=None)


def resume(run_ref: str | Path, on_event: Callable[[dict], None] | None = None) -> RunResult:
    """Continue an interrupted or stopped run from its last complete checkpoint."""
    from .runs import find_run
    run_dir = find_run(run_ref)
    cfg = RunConfig.from_yaml(run_dir / "config.yaml").validate()
    hw = resolve_hardware(cfg)
    examples = _load_data(cfg)
    checkpoint = last_checkpoint(run_dir)
    if checkpoint is None:
        raise RunError(f"{run_dir.name}: no complete checkpoint to resume from "
                       f"(set train.save_steps to write checkpoints during a run)")
    dropped = drop_incomplete(run_dir) if is_main_process() else []
    return _execute(cfg, hw, run_dir, examples, on_event, checkpoint=checkpoint, dropped=dropped)


def _load_data(cfg: RunConfig) -> tuple[list, list]:
    _, rows = data_mod.load_examples(cfg.data.train, cfg.objective)
    if cfg.data.eval:
        _, eval_rows = data_mod.load_examples(cfg.data.eval, cfg.objective)
        return rows, eval_rows
    return data_mod.split_eval(rows, cfg.data.eval_fraction, cfg.train.seed)


def _execute(cfg: RunConfig, hw: Hardware, run_dir: Path, examples, on_event, checkpoint,
             dropped: list[str] | None = None) -> RunResult:
    run_id = run_dir.name
    train_rows, eval_rows = examples
    _quiet_libraries()
    main = is_main_process()
    pid = os.getpid()
    initial = dict(run_id=run_id, method=cfg.method, model=cfg.model, data=cfg.data.train, name=cfg.name,
                   max_steps=cfg.train.max_steps, started=time.time(), pid=pid,
                   pid_start=process_start_time(pid), error=None, processes=world()[1], phase=LOADING)
    if main:
        (run_dir / STOP_FILE).unlink(missing_ok=True)
        events, status = EventWriter(run_dir, on_event), Status(run_dir, **initial)
    else:
        events, status = Quiet(), Quiet(initial)
    status.update(status="running", step=status.state.get("step", 0))
    start_step = int(checkpoint.name.split("-")[1]) if checkpoint else 0
    step = start_step
    try:
        with RunSignals() as stop_flag:   # signals set the flag; it is read at the boundaries below
            stop_flag.check()
            t_load = time.time()
            model, peft_config = _method(cfg.method).load(cfg, hw)
            stop_flag.check()
            tokenizer = loading.load_tokenizer(cfg.model)
            train_ds = data_mod.to_dataset(train_rows)
            eval_ds = data_mod.to_dataset(eval_rows) if eval_rows else None
            callback = event_callback_class()(events, status, cfg.train.max_steps, stop_flag, run_dir,
                                               _pace(cfg, len(eval_rows), eval_ds is not None))
            common = _common_args(cfg, hw, run_dir, eval_ds is not None)
            stop_flag.check()   # before the trainer tokenises the data
            make = _method(cfg.method).make_trainer if cfg.adapter else _sft_trainer
            trainer = make(cfg, hw, model, peft_config, tokenizer, train_ds, eval_ds, common,
                           [callback, core_share_callback_class()()])
            from transformers.trainer_callback import PrinterCallback
            trainer.remove_callback(PrinterCallback)  # our events replace its printed dicts
            if cfg.method != "full" and hw.precision in ("bf16", "fp16"):   # the Trainer autocasts
                _method("lora").skip_input_casts(trainer.model)
            trainable, total = loading.count_parameters(trainer.model)
            # NO, MULTI_GPU (DDP, also over gloo on CPUs), FSDP, DEEPSPEED: what `accelerate launch` set up
            parallel = str(getattr(trainer.accelerator.distributed_type, "value", trainer.accelerator.distributed_type))
            _return_freed_memory()
            load_s = time.time() - t_load
            if checkpoint is None:
                events.emit("start", run_id=run_id, method=cfg.method, model=cfg.model,
                            max_steps=cfg.train.max_steps, trainable_params=trainable, total_params=total,
                            device=hw.device, precision=hw.precision, train_rows=len(train_rows),
                            eval_rows=len(eval_rows), load_s=load_s, processes=world()[1], parallel=parallel)
            else:
                events.emit("resume", run_id=run_id, checkpoint=str(checkpoint.relative_to(run_dir)),
                            step=start_step, dropped_incomplete=dropped or [], trainable_params=trainable,
                            total_params=total, device=hw.device, precision=hw.precision)
            # Training begins: from here a stop is the callback's, at a step's end. The phase is
            # written before the last look at the flag and STOP file (stopping.py says why).
            status.update(trainable_params=trainable, total_params=total, device=hw.device,
                          precision=hw.precision, parallel=parallel, phase=TRAINING)
            stop_flag.check(run_dir)
            t_train = time.time()
            with cpushare.training():   # the arena computes on the other cores meanwhile
                out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
            train_s = time.time() - t_train
            step = trainer.state.global_step
            if callback.nan_step is not None:
                raise RunError(f"the loss became NaN at step {callback.nan_step}; "
                               f"try a lower train.lr (now {cfg.train.lr})")
            stopped = stop_flag.is_set() and step < cfg.train.max_steps
            # The Trainer already evaluates at the last step when eval_steps is set (its
            # DefaultFlowCallback); evaluating again here ran the final eval twice. The
            # callback turns evaluate()'s own log into the eval event.
            if eval_ds is not None and not stopped and callback.last_eval_step != step:
                trainer.evaluate()
            eval_loss = callback.last_eval
            model_dir = run_dir / MODEL_DIR
            _save_outputs(trainer, tokenizer, model_dir, main)
            if not main:
                return RunResult(run_id, run_dir, "stopped" if stopped else "finished", {}, trainer.model)
            events.emit("save", step=step, path=MODEL_DIR)
            tokens = trainer.state.num_input_tokens_seen or _logged_tokens(trainer)
            summary = {
                "run_id": run_id, "method": cfg.method, "model": cfg.model, "data": cfg.data.train,
                "adapter": cfg.adapter,
                "trainable_params": trainable, "total_params": total,
                "trainable_pct": 100.0 * trainable / total if total else None,
                "steps": step, "max_steps": cfg.train.max_steps,
                "wall_time_s": train_s, "load_time_s": load_s,
                "tokens_per_s": tokens / train_s if tokens and train_s > 0 else None,
                "samples_per_s": (step - start_step) * cfg.train.batch_size * cfg.train.grad_accum * world()[1] / train_s
                if train_s > 0 else None,
                "peak_memory_mb": peak_memory_mb(hw.device),
                "final_loss": callback.last_loss if callback.last_loss is not None else out.training_loss,
                "mean_train_loss": out.training_loss,
                "final_eval_loss": eval_loss,
                "device": hw.device, "precision": hw.precision,
                "output_size_mb": _folder_mb(model_dir),
            }
            write_json_atomic(run_dir / SUMMARY_FILE, summary)
            if stopped and stopped_by_app(run_dir):   # nobody pressed Stop: the app ended; the checkpoint resumes it
                record_app_ended(status, events, step, trained=True, summary=summary)
                return RunResult(run_id, run_dir, "interrupted", summary, trainer.model)
            final = "stopped" if stopped else "finished"
            status.update(status=final, step=step, finished=time.time(), summary=summary)
            events.emit("finish", status=final, step=step, summary=summary)
            return RunResult(run_id, run_dir, final, summary, trainer.model)
    except StopRequested:   # a stop while it loaded: nothing trained, nothing to save
        by_app = stopped_by_app(run_dir)
        record_unstarted(status, events, start_step, by_app=by_app)
        return RunResult(run_id, run_dir, "interrupted" if by_app else "cancelled")
    except BaseException as exc:
        message = _one_line(exc)
        if _is_out_of_memory(exc):
            message = (f"out of memory after step {status.state.get('step', step)}: {message}; try a smaller "
                       f"train.batch_size or train.max_length, gradient checkpointing, or qlora")
        events.emit("fail", error=message, step=status.state.get("step", step),
                    traceback=traceback.format_exc(limit=20))
        status.update(status="failed", error=message, finished=time.time())
        if isinstance(exc, (RunError, ConfigError, models.ModelError, data_mod.DataError, KeyboardInterrupt)):
            raise
        raise RunError(message) from exc
    finally:
        events.close()


def _is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA/MPS allocator failure, or the CPU's MemoryError (what is left to catch when the
    kernel's OOM killer does not strike first: that one ends the process, see processes.reap)."""
    import torch
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _return_freed_memory() -> None:
    """Hand the heap that loading freed (the checkpoint as read, before conversion or
    4-bit quantisation) back to the OS, so training's resident memory is what training
    holds. glibc keeps freed memory in the process otherwise; elsewhere this does nothing."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _quiet_libraries() -> None:
    """Progress bars from datasets/transformers would interleave with ours."""
    import datasets
    import huggingface_hub
    import transformers
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if not isinstance(exc, (RunError, ConfigError)) else first


def _logged_tokens(trainer) -> int | None:
    for entry in reversed(trainer.state.log_history):
        if "num_tokens" in entry:
            return int(entry["num_tokens"])
    return None


def _save_outputs(trainer, tokenizer, model_dir: Path, main: bool = True) -> None:
    """Adapter or full model, safetensors only, plus the tokenizer; written to a temp
    folder and renamed so a crash never leaves a half-written model behind. With several
    processes every one takes part (FSDP and DeepSpeed gather the sharded weights) and the
    main process writes."""
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    if world()[1] > 1:
        trainer.accelerator.wait_for_everyone()
        trainer.save_model(str(tmp))   # collective; safetensors (save_safetensors defaults on)
        if not main:
            return
        (tmp / "training_args.bin").unlink(missing_ok=True)   # a pickle; config.yaml says it all
    else:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(model_dir, ignore_errors=True)
    os.replace(tmp, model_dir)


def _folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20

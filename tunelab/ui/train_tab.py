"""Train tab: choose a method, model, data and hyperparameters; start, follow and stop a run.

Every config widget is registered under its dotted field path (`lora.r`), gets its help
from `config.field_help` and feeds one dict to the handlers, which build a RunConfig
through `train_logic.config_from_values`. Start hands the config to `jobs.launch` (a
subprocess) and returns at once; a 1 s `gr.Timer` then reads the run's new events and
redraws the progress bar and charts. No handler here waits on training.

The form and its estimate come first, Start beside them; the run (progress, Stop, charts)
sits below the form and Start scrolls it into view. Each message says what it is about:
the form, or one run (tagged with its id, see notes.py), and goes when it no longer holds;
a queued run's message is redrawn each tick with its place in line, from the same read as
the progress panel. With logins on, Stop is enabled only for the user who may stop the
followed run (its owner or an admin, service/access.py), and a line says whose run it is.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from ..teach import charts
from ..modelio import hub
from ..training import runs
from ..training.config import ConfigError, RunConfig, field_choices, field_help
from ..data import DataError
from ..training.estimate import estimate, wait_note
from ..training.memory import NotEnoughMemory, fit_memory
from ..modelio.models import ModelError
from ..training.runfolder import RunError
from . import data_logic, logic, notes, train_logic

EVENTS = train_logic.EventCache()

# Short labels; the help line under each comes from the config field.
LABELS = {
    "method": "Method", "model": "Base model", "name": "Run name (optional)", "data.train": "Dataset",
    "data.eval_fraction": "Held out for eval", "data.completion_only": "Loss on answers only",
    "train.max_steps": "Steps", "train.batch_size": "Batch size", "train.lr": "Learning rate",
    "train.max_length": "Max length (tokens)", "train.precision": "Precision", "train.grad_accum": "Grad accumulation",
    "train.scheduler": "LR schedule", "train.warmup_ratio": "Warm-up share", "train.weight_decay": "Weight decay",
    "train.seed": "Seed", "train.logging_steps": "Log every", "train.eval_steps": "Eval every",
    "train.save_steps": "Checkpoint every", "train.gradient_checkpointing": "Gradient checkpointing",
    "train.group_by_length": "Group by length", "train.auto_micro_batch": "Micro-batches to fit memory",
    "train.device": "Device", "lora.r": "Rank r", "lora.alpha": "Alpha α", "lora.dropout": "Dropout",
    "lora.target_modules": "Target modules", "qlora.quant_type": "4-bit type", "qlora.double_quant": "Double quantisation",
    "dpo.beta": "Beta β", "dpo.adapter": "What trains", "dpo.loss_type": "Loss", "dpo.precompute_ref": "Precompute reference",
    "kto.beta": "Beta β", "kto.adapter": "What trains", "kto.desirable_weight": "Weight of good answers",
    "kto.undesirable_weight": "Weight of bad answers", "kto.precompute_ref": "KTO: precompute reference",
    "orpo.beta": "Lambda λ", "orpo.adapter": "What trains",
    "speed.answer_head": "Answer-only head", "speed.pack_rows": "Pack short rows",
    "speed.short_attention": "Short-batch attention",
}
FEEDBACK_FIELDS = {"dpo": ("dpo.beta", "dpo.adapter", "dpo.loss_type"),
                   "kto": ("kto.beta", "kto.adapter", "kto.desirable_weight", "kto.undesirable_weight"),
                   "orpo": ("orpo.beta", "orpo.adapter")}
# Fields that change the parameter count or the memory estimate.
ESTIMATE_FIELDS = ("method", "model", "train.batch_size", "train.max_length", "train.precision", "train.grad_accum",
                   "train.gradient_checkpointing", "train.device", "lora.r", "lora.dropout", "lora.target_modules",
                   "qlora.quant_type", "qlora.double_quant", "dpo.adapter", "kto.adapter", "orpo.adapter",
                   "dpo.precompute_ref", "kto.precompute_ref", "train.auto_micro_batch")

# After a Start that started (or queued) a run, whose message names it (notes.run_note),
# scroll the run's progress, Stop and charts into view: the form above them is taller than
# a laptop's screen, and a user who pressed Start wants to watch.
SHOW_RUN = """(note) => {
  if (note && note.includes("data-run=")) {
    document.getElementById("train-run")?.scrollIntoView({behavior: "smooth", block: "start"});
  }
}"""


def ui_defaults() -> dict:
    """The config the tab opens with: the shipped defaults, a held-out share so eval loss
    shows on the chart, and checkpoints so an interrupted run can be resumed."""
    cfg = RunConfig()
    cfg.model = logic.default_model()
    cfg.data.train = next((v for _, v in data_logic.dataset_choices() if v.endswith("pirate_sft.jsonl")), cfg.data.train)
    cfg.data.eval_fraction, cfg.train.eval_steps, cfg.train.save_steps = 0.1, 10, 10
    return logic.flatten(cfg.to_dict())


def _widget(path: str, defaults: dict, **kw):
    """A widget for one config field, typed from its default, labelled and helped from the config.
    No min/max on number boxes: the config's validation names the field and the rule."""
    value, choices = defaults[path], field_choices(path)
    common = dict(label=LABELS.get(path, path), info=field_help(path),
                  elem_id="f-" + path.replace(".", "-").replace("_", "-"), **kw)
    if choices:
        return gr.Dropdown(choices=list(choices), value=value, **common)
    if isinstance(value, bool):
        return gr.Checkbox(value=value, **common)
    if isinstance(value, int):
        return gr.Number(value=value, precision=0, **common)
    if isinstance(value, float):
        return gr.Number(value=value, **common)
    return gr.Textbox(value="" if value is None else str(value), **common)


def _cfg_values(fields: dict, values: dict) -> dict:
    return {path: values[comp] for path, comp in fields.items()}


def build(jobs) -> SimpleNamespace:
    """Build the tab's widgets (inside a gr.Tab) and wire its own events. `jobs` is the
    app's job queue and child processes (service.jobs.Jobs): Start, Stop and the tick use it."""
    d = ui_defaults()
    f: dict = {}
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Group():
                f["method"] = gr.Radio(list(field_choices("method")), value=d["method"], label="Method",
                                       info=field_help("method"), elem_id="f-method")
                method_card = gr.HTML(train_logic.method_html(d["method"]), padding=True)
            with gr.Group():
                with gr.Row():
                    # At app start, wait (a few seconds at most) for the hub check, so that every
                    # tab's model picker is right from the first page; pages refresh it on load.
                    f["model"] = gr.Dropdown(logic.model_choices(wait=hub.TIMEOUT_S), value=d["model"],
                                             allow_custom_value=True,
                                             label=LABELS["model"], info=field_help("model") +
                                             " Folders: the workspace or TUNELAB_MODEL_DIRS.", elem_id="f-model",
                                             scale=3)
                    f["name"] = _widget("name", d, scale=2)
                with gr.Row():
                    f["data.train"] = gr.Dropdown(data_logic.dataset_choices(), value=d["data.train"],
                                                  label=LABELS["data.train"],
                                                  info="Lab data or a file uploaded in the Data tab.",
                                                  elem_id="f-data-train", scale=3)
                    f["data.eval_fraction"] = gr.Slider(0.0, 0.5, value=d["data.eval_fraction"], step=0.05,
                                                        label=LABELS["data.eval_fraction"],
                                                        info=field_help("data.eval_fraction"),
                                                        elem_id="f-data-eval-fraction", scale=2)
                data_line = gr.HTML(train_logic.dataset_line(d["data.train"], d["method"]), padding=True)
            with gr.Group():
                with gr.Row():
                    for p in ("train.max_steps", "train.batch_size", "train.lr", "train.max_length"):
                        f[p] = _widget(p, d)
                with gr.Row():
                    for p in ("train.precision", "train.scheduler", "train.warmup_ratio", "train.grad_accum"):
                        f[p] = _widget(p, d)
            show = train_logic.visible_groups(d["method"], d["dpo.adapter"])
            feedback_groups = {}
            for method, fields in FEEDBACK_FIELDS.items():   # each feedback method's own settings
                with gr.Group(visible=show[method]) as feedback_groups[method]:
                    with gr.Row():
                        for p in fields:
                            f[p] = _widget(p, d)
            with gr.Group(visible=show["lora"]) as lora_group:
                with gr.Row():
                    for p in ("lora.r", "lora.alpha", "lora.dropout", "lora.target_modules"):
                        f[p] = _widget(p, d)
            with gr.Group(visible=show["qlora"]) as qlora_group:
                with gr.Row():
                    for p in ("qlora.quant_type", "qlora.double_quant"):
                        f[p] = _widget(p, d)
            with gr.Accordion("More settings", open=False):
                with gr.Row():
                    for p in ("train.eval_steps", "train.save_steps", "train.logging_steps", "train.seed"):
                        f[p] = _widget(p, d)
                with gr.Row():
                    for p in ("train.weight_decay", "train.device", "data.completion_only",
                              "train.gradient_checkpointing", "train.group_by_length", "train.auto_micro_batch",
                              "dpo.precompute_ref", "kto.precompute_ref"):
                        f[p] = _widget(p, d)
                with gr.Row():   # what TuneLab adds to TRL for speed: each can be turned off to compare
                    for p in ("speed.answer_head", "speed.pack_rows", "speed.short_attention"):
                        f[p] = _widget(p, d)

        with gr.Column(scale=2):
            with gr.Accordion("Lab", open=True, visible=False, elem_id="train-lab") as lab_box:
                lab_text = gr.Markdown("", elem_id="train-lab-text")
            gr.HTML('<div class="tl-section">Before you start</div>')
            pending = wait_note(d["model"])
            estimate_box = gr.HTML(logic.message_html(pending, "info") if pending else
                                   '<div class="tl-hint">Estimating…</div>', elem_id="train-estimate", padding=True)
            start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
            message = gr.HTML("", elem_id="train-message")   # what Start did: started, queued, or why not
            with gr.Accordion("Run this on a multi-GPU machine", open=False, elem_id="train-multi-gpu"):
                with gr.Row():
                    gpus = gr.Number(8, precision=0, label="GPUs", minimum=1, scale=1, elem_id="train-gpus")
                    multi_btn = gr.Button("Show the command", size="sm", scale=2, elem_id="train-multi-gpu-btn")
                multi_cmd = gr.Code("", language="shell", label="Copy and run it there (the copy button is at "
                                    "the top right)", elem_id="train-multi-gpu-cmd", interactive=False)

    # The run: progress, Stop, what Stop did, and the live charts, kept together below the form
    # (which is taller than a screen) so that Start can bring all of them into view at once.
    with gr.Column(elem_id="train-run"):
        gr.HTML('<div class="tl-section">Progress</div>')
        with gr.Row(equal_height=False):
            with gr.Column(scale=6):
                progress = gr.HTML(train_logic.progress_html(None), elem_id="train-progress")
            with gr.Column(scale=1, min_width=120):
                stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="train-stop")
        whose_box = gr.HTML("", elem_id="train-whose")   # with logins: whose run it is, when Stop is not yours
        run_message = gr.HTML("", elem_id="train-run-message")   # what Stop did
        with gr.Row():  # the figures carry their own titles
            loss_plot = gr.Plot(charts.loss_figure([]), show_label=False, elem_id="chart-loss")
            lr_plot = gr.Plot(charts.lr_figure([]), show_label=False, elem_id="chart-lr")
            tps_plot = gr.Plot(charts.throughput_figure([]), show_label=False, elem_id="chart-throughput")
        dpo_plot = gr.Plot(None, show_label=False, visible=False, elem_id="chart-dpo")

    run_state = gr.State(None)   # the run this page follows
    seen_state = gr.State(-1)    # how many of its events the charts already show
    own_state = gr.State([])     # runs this page started: while one of them trains, Start waits
    uploaded = gr.State(None)    # the Data tab's latest upload: picked when a method that fits is chosen
    stopping_state = gr.State(None)   # the run this page asked to stop: how it ended replaces "Stopping…"
    timer = gr.Timer(1.0, active=False)
    inputs = set(f.values())
    ns = SimpleNamespace(fields=f, run_state=run_state, seen_state=seen_state, timer=timer, progress=progress,
                         start_btn=start_btn, stop_btn=stop_btn, message=message, dataset=f["data.train"],
                         method=f["method"], uploaded=uploaded,
                         max_length=f["train.max_length"], estimate_box=estimate_box, data_line=data_line)
    plots = [loss_plot, lr_plot, tps_plot, dpo_plot]

    # --- method / dataset --------------------------------------------------------------
    groups = {"lora": lora_group, "qlora": qlora_group, **feedback_groups}
    adapters = [f[f"{m}.adapter"] for m in ("dpo", "kto", "orpo")]

    def on_method(method, dpo_adapter, kto_adapter, orpo_adapter, dataset, upload):
        adapter = {"dpo": dpo_adapter, "kto": kto_adapter, "orpo": orpo_adapter}.get(method, method)
        show = train_logic.visible_groups(method, adapter)
        choices = data_logic.dataset_choices()
        # The current dataset stays if the method can use it, else the latest upload if it can.
        picked = train_logic.pick_dataset(method, dataset, [c for c in choices if c[1] == upload] + choices)
        return {method_card: train_logic.method_html(method),
                **{group: gr.Group(visible=show[name]) for name, group in groups.items()},
                f["data.train"]: gr.Dropdown(value=picked), data_line: train_logic.dataset_line(picked, method)}

    gr.on([f["method"].change] + [a.change for a in adapters], on_method,
          inputs=[f["method"], *adapters, f["data.train"], uploaded],
          outputs=[method_card, *groups.values(), f["data.train"], data_line],
          show_progress="hidden")
    f["data.train"].change(train_logic.dataset_line, inputs=[f["data.train"], f["method"]], outputs=data_line,
                           show_progress="hidden")

    # --- the estimate --------------------------------------------------------------------
    def on_estimate(values):
        try:
            cfg = train_logic.config_from_values(_cfg_values(f, values), check_data=False)
            note = wait_note(cfg.model)
            if note:  # a slow first step (a GGUF conversion, a hub read): say so, not the last model's figures
                yield logic.message_html(note, "info")
            est = estimate(cfg)
            try:   # what Start will do in the memory free now: as set, as micro-batches, or refuse
                fit, refused = fit_memory(cfg, est=est), None
            except NotEnoughMemory as e:
                fit, refused = None, str(e)
            except Exception:  # noqa: BLE001 — Start checks again; the figures above still stand
                fit, refused = None, None
            yield train_logic.estimate_html(est, fit.note if fit else None, refused)
        except ModelError as e:
            yield logic.message_html(f"No estimate for this model: {e}", "warn")
        except (ConfigError, ValueError) as e:
            yield logic.message_html(str(e), "warn")
        except Exception as e:  # an estimate must never break the page; the run itself will say more
            yield logic.message_html(f"No estimate for this config: {e}", "warn")

    ns.on_estimate = on_estimate
    gr.on([f[p].change for p in ESTIMATE_FIELDS], on_estimate, inputs=inputs, outputs=estimate_box,
          trigger_mode="always_last", concurrency_id="estimate", concurrency_limit=1, show_progress="hidden")

    # --- start / follow / stop -------------------------------------------------------------
    def dpo_chart(events: list, method: str | None):
        # Before its first step a run's events don't say its method yet: the waiting figure.
        fig = charts.feedback_figure(events, method)
        return gr.Plot(fig, visible=fig is not None)

    def waiting(method: str) -> dict:
        return {loss_plot: charts.loss_figure([]), lr_plot: charts.lr_figure([]),
                tps_plot: charts.throughput_figure([]), dpo_plot: dpo_chart([], method)}

    def on_start(values, request: gr.Request):
        try:
            cfg = train_logic.config_from_values(_cfg_values(f, values))
            run_id = jobs.launch(cfg, owner=logic.user_of(request))
        except (ConfigError, DataError, ModelError, RunError, ValueError, OSError) as e:
            # About the form, whatever run the panel below still shows.
            return {message: notes.form_note(str(e))}
        # One look at the queue for the message and the panel: they name the same place in line.
        place = jobs.queue_position(run_id)
        status = {"status": "queued", "queue": place} if place else {"status": "starting"}
        ps = train_logic.progress_state([], {**status, "max_steps": cfg.train.max_steps})
        return {message: notes.launch_note(run_id, place, jobs.memory_note(run_id) or ""), run_message: "", whose_box: "",
                run_state: run_id, seen_state: -1, timer: gr.Timer(active=True),
                own_state: [*values[own_state], run_id],
                start_btn: gr.Button(interactive=False), stop_btn: gr.Button(interactive=True),
                progress: train_logic.progress_html(ps, run_id), **waiting(cfg.method)}

    def on_multi_gpu(values):
        try:
            cfg = train_logic.config_from_values(_cfg_values(f, values))
            return {multi_cmd: train_logic.multi_gpu_command(cfg, max(1, int(values[gpus] or 1))), message: ""}
        except (ConfigError, DataError, ModelError, ValueError, OSError) as e:
            return {multi_cmd: "", message: logic.message_html(str(e), "error")}

    multi_btn.click(on_multi_gpu, inputs={*inputs, gpus}, outputs=[multi_cmd, message])

    start_btn.click(on_start, inputs={*inputs, own_state},
                    outputs=[message, run_message, whose_box, run_state, seen_state, timer, start_btn, stop_btn,
                             progress, own_state, *plots],
                    concurrency_id="launch", concurrency_limit=1
                    ).then(None, inputs=message, js=SHOW_RUN)   # started: bring progress and charts into view
    # A form error is about the form as it was: an edit makes it stale (in the browser, no round trip).
    gr.on([c.input for c in f.values()], None, inputs=message, outputs=message, show_progress="hidden",
          js="""(note) => note && note.includes('data-about="form"') ? "" : note""")

    def unfit_notes(start_note, stop_note, run_id, settled) -> dict:
        # A message about another run, or one about this run that only held while it went.
        return {box: "" for box, note in ((message, start_note), (run_message, stop_note))
                if not notes.keep(note, run_id, settled)}

    def on_tick(run_id, seen, own, stopping, start_note, stop_note, request: gr.Request):
        if not run_id:
            return {timer: gr.Timer(active=False)}
        jobs.reap()
        try:
            run_dir = logic.run_dir(run_id)
        except RunError:  # deleted from the Runs tab
            return {timer: gr.Timer(active=False), run_state: None, progress: train_logic.progress_html(None),
                    start_btn: gr.Button(interactive=True), stop_btn: gr.Button(interactive=False), whose_box: "",
                    **unfit_notes(start_note, stop_note, None, True)}
        # Everything below is drawn from this one read of the run's status and of the queue:
        # the progress panel and Start's "Queued: n of m" message name the same place.
        status = runs.run_status(run_dir)
        place = jobs.queue_position(run_id) if status.get("status") == "queued" else None
        status["queue"] = place
        events = EVENTS.events(run_dir)
        ps = train_logic.progress_state(events, status)
        last = events[-1]["type"] if events else None
        # finished/stopped runs write status.json a moment before their final events: keep
        # ticking until the finish event is in, so the charts show the last point.
        settled = ps["done"] and (ps["state"] in ("failed", "interrupted", "cancelled") or last in ("finish", "fail"))
        # With logins, Stop is its owner's (and the admins'); without, anyone here may stop any run.
        may_stop, whose = train_logic.stop_control(ps, status, logic.user_of(request))
        # Following someone else's run (the page opened while it trained) leaves Start free:
        # a second run queues behind it.
        out = {progress: train_logic.progress_html(ps, run_id), timer: gr.Timer(active=not settled),
               start_btn: gr.Button(interactive=ps["done"] or run_id not in own),
               stop_btn: gr.Button(interactive=may_stop),
               whose_box: f'<div class="tl-hint">{logic.esc(whose)}</div>' if whose else "",
               **unfit_notes(start_note, stop_note, run_id, settled)}
        if message not in out:   # Start's message: a queued run's place as it is now, or "Started"
            # A queued run is fitted to the memory at its turn: what that changed, once it starts.
            redrawn = notes.requeue(start_note, run_id, status.get("status"), place, status.get("memory_note") or "")
            if redrawn is not None:
                out[message] = redrawn
        if settled and stopping == run_id:
            out.update({run_message: notes.run_note(f"{run_id}: {train_logic.ended_line(ps)}", "info", run_id, "follow"),
                        stopping_state: None})
        if len(events) != seen:
            out.update({loss_plot: charts.loss_figure(events), lr_plot: charts.lr_figure(events),
                        tps_plot: charts.throughput_figure(events),
                        dpo_plot: dpo_chart(events, status.get("method")), seen_state: len(events)})
        return out

    timer.tick(on_tick, inputs=[run_state, seen_state, own_state, stopping_state, message, run_message],
               outputs=[progress, timer, start_btn, stop_btn, whose_box, run_state, seen_state, message,
                        run_message, stopping_state, *plots],
               show_progress="hidden")

    def on_stop(run_id, request: gr.Request):
        if not run_id:
            return {run_message: logic.message_html("No run to stop.", "warn")}
        try:
            # Read before the stop: a run stopped while it loads may be "cancelled" a moment later.
            was_queued = runs.run_status(logic.run_dir(run_id)).get("status") == "queued"
            stopping = jobs.stop(run_id, by=logic.user_of(request))
        except RunError as e:
            return {run_message: notes.run_note(str(e), "error", run_id, "follow")}
        text = (f"Cancelled {run_id}: it left the queue without training." if stopping and was_queued else
                f"Stopping {run_id}: still loading, it ends at once; training, it finishes its current step, "
                f"saves, and ends." if stopping else f"{run_id} is not running.")
        # "Stopping…" holds while the run goes (the tick puts how it ended in its place); the rest stay.
        until = "end" if stopping and not was_queued else "follow"
        return {run_message: notes.run_note(text, "info", run_id, until), stop_btn: gr.Button(interactive=False),
                stopping_state: run_id if stopping and not was_queued else None}

    stop_btn.click(on_stop, inputs=run_state, outputs=[run_message, stop_btn, stopping_state])

    # --- page load: follow a run that is still going ---------------------------------------
    def on_load():
        choices = data_logic.dataset_choices()
        live = next((r for r in runs.list_runs() if r["status"] in ("running", "starting")), None)
        out = {f["data.train"]: gr.Dropdown(choices=choices), f["model"]: gr.Dropdown(choices=logic.model_choices())}
        if live:
            out.update({run_state: live["run_id"], seen_state: -1, timer: gr.Timer(active=True)})
        return out

    ns.on_load = on_load
    ns.load_outputs = [f["data.train"], f["model"], run_state, seen_state, timer]

    def follow(run_id):
        """Outputs that make this tab follow `run_id` (used by the Runs tab's Resume / Open and the
        Arena's DPO run): the messages about the run it followed before go with it."""
        return {run_state: run_id, seen_state: -1, timer: gr.Timer(active=True), message: "", run_message: "",
                whose_box: ""}

    ns.follow = follow
    ns.follow_outputs = [run_state, seen_state, timer, message, run_message, whose_box]

    def show_lab(number: int, title: str, instructions: str):
        """Outputs that pin a lab's instructions beside the controls (the Labs tab's Load)."""
        return {lab_box: gr.Accordion(label=f"Lab {number}: {title}", visible=True, open=True),
                lab_text: instructions}

    ns.show_lab = show_lab
    ns.lab_outputs = [lab_box, lab_text]
    return ns

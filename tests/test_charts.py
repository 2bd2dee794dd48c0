"""Charts from synthetic events: the traces carry the logged numbers (not pixels), an
empty run says it is waiting, DPO panels appear only for DPO runs."""

import math

import plotly.graph_objects as go
import pytest

from tunelab.teach import charts


def sft_events(n=5, eval_every=2, loss0=3.0):
    ev = [{"type": "start", "time": 0.0, "method": "lora", "max_steps": n}]
    for s in range(1, n + 1):
        ev.append({"type": "step", "time": float(s), "step": s, "max_steps": n, "loss": loss0 - 0.25 * s,
                   "lr": 1e-4 * (n - s + 1) / n, "grad_norm": 1.0 + s, "tokens_per_s": 100.0 * s,
                   "elapsed_s": 2.0 * s, "eta_s": 2.0 * (n - s)})
        if s % eval_every == 0:
            ev.append({"type": "eval", "time": float(s), "step": s, "eval_loss": loss0 - 0.2 * s})
    ev.append({"type": "finish", "time": float(n + 1), "status": "finished", "step": n, "summary": {}})
    return ev


def dpo_events(n=4):
    ev = [{"type": "start", "time": 0.0, "method": "dpo", "max_steps": n}]
    for s in range(1, n + 1):
        ev.append({"type": "step", "time": float(s), "step": s, "max_steps": n, "loss": 0.69 - 0.1 * s,
                   "lr": 5e-5, "grad_norm": 0.5, "tokens_per_s": 50.0, "elapsed_s": float(s), "eta_s": 1.0,
                   "rewards_chosen": 0.1 * s, "rewards_rejected": -0.2 * s, "margin": 0.3 * s,
                   "accuracy": min(1.0, 0.25 * s), "logps_chosen": -20.0, "logps_rejected": -30.0})
    ev.append({"type": "eval", "time": float(n), "step": n, "eval_loss": 0.4, "eval_margin": 1.1,
               "eval_accuracy": 0.75})
    return ev


def trace(fig, name):
    found = [t for t in fig.data if t.name == name]
    assert found, f"no trace {name!r} in {[t.name for t in fig.data]}"
    return found[0]


def is_waiting(fig):
    return any(a.text == charts.WAITING for a in fig.layout.annotations)


def test_series_sft():
    s = charts.series(sft_events())
    train, ev = s["train"], s["eval"]
    assert list(train.columns) == ["step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]
    assert train["step"].tolist() == [1, 2, 3, 4, 5]
    assert train["loss"].tolist() == pytest.approx([2.75, 2.5, 2.25, 2.0, 1.75])
    assert ev["step"].tolist() == [2, 4] and ev["eval_loss"].tolist() == pytest.approx([2.6, 2.2])
    assert list(ev.columns) == ["step", "eval_loss"]


def test_series_dpo_has_reward_columns():
    s = charts.series(dpo_events())
    for col in ("rewards_chosen", "rewards_rejected", "margin", "accuracy"):
        assert col in s["train"].columns
    assert s["train"]["margin"].tolist() == pytest.approx([0.3, 0.6, 0.9, 1.2])
    assert s["eval"].iloc[0].to_dict() == pytest.approx({"step": 4, "eval_loss": 0.4, "eval_margin": 1.1,
                                                         "eval_accuracy": 0.75})


def test_series_resumed_run_keeps_last_value_of_a_step_and_nulls_become_nan():
    ev = sft_events(3)
    ev += [{"type": "resume", "step": 2}, {"type": "step", "step": 3, "loss": None, "lr": 1e-5}]
    train = charts.series(ev)["train"]
    assert train["step"].tolist() == [1, 2, 3]
    assert math.isnan(train["loss"].iloc[-1]) and train["lr"].iloc[-1] == 1e-5


def test_loss_figure_has_train_line_and_eval_markers():
    fig = charts.loss_figure(sft_events(), title="my run")
    assert isinstance(fig, go.Figure) and fig.layout.title.text == "my run"
    train, ev = trace(fig, "train loss"), trace(fig, "eval loss")
    assert list(train.x) == [1, 2, 3, 4, 5] and list(train.y) == pytest.approx([2.75, 2.5, 2.25, 2.0, 1.75])
    assert "lines" in train.mode and ev.mode == "markers" and list(ev.x) == [2, 4]
    assert fig.layout.template.layout.paper_bgcolor == "white"  # plotly_white
    assert fig.layout.xaxis.title.text == "step" and fig.layout.yaxis.title.text == "loss"
    assert fig.layout.height == charts.HEIGHT
    assert not is_waiting(fig)


def test_lr_and_throughput_figures():
    ev = sft_events()
    lr = charts.lr_figure(ev)
    assert list(lr.data[0].y) == pytest.approx([1e-4, 8e-5, 6e-5, 4e-5, 2e-5])
    tp = charts.throughput_figure(ev)
    assert list(tp.data[0].y) == [100.0, 200.0, 300.0, 400.0, 500.0]
    assert tp.layout.yaxis.title.text == "tokens / s"


def test_dpo_figure_for_dpo_runs_only():
    assert charts.dpo_figure(sft_events()) is None
    fig = charts.dpo_figure(dpo_events())
    assert list(trace(fig, "chosen").y) == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert list(trace(fig, "rejected").y) == pytest.approx([-0.2, -0.4, -0.6, -0.8])
    assert list(trace(fig, "margin").y) == pytest.approx([0.3, 0.6, 0.9, 1.2])
    acc = trace(fig, "accuracy")
    assert list(acc.y) == [0.25, 0.5, 0.75, 1.0] and acc.yaxis == "y2"  # accuracy on the right axis
    # A DPO run that has only started: a waiting figure, not None.
    assert is_waiting(charts.dpo_figure(dpo_events()[:1]))


def feedback_events(method, n=3, **fields):
    """A KTO or ORPO run's events: step s logs each field's value times s."""
    ev = [{"type": "start", "time": 0.0, "method": method, "max_steps": n}]
    for s in range(1, n + 1):
        ev.append({"type": "step", "time": float(s), "step": s, "max_steps": n, "loss": 0.5, "lr": 5e-5,
                   "grad_norm": 0.5, "tokens_per_s": 50.0, "elapsed_s": float(s), "eta_s": 1.0,
                   **{k: v * s for k, v in fields.items()}})
    return ev


def test_kto_figure_shows_desirable_undesirable_margin_and_kl():
    events = feedback_events("kto", rewards_chosen=0.1, rewards_rejected=-0.2, margin=0.3, kl=0.05)
    assert charts.kto_figure(dpo_events()) is None and charts.dpo_figure(events) is None
    fig = charts.kto_figure(events)
    assert list(trace(fig, "desirable").y) == pytest.approx([0.1, 0.2, 0.3])
    assert list(trace(fig, "undesirable").y) == pytest.approx([-0.2, -0.4, -0.6])
    assert list(trace(fig, "margin").y) == pytest.approx([0.3, 0.6, 0.9])
    kl = trace(fig, "KL estimate")
    assert list(kl.y) == pytest.approx([0.05, 0.1, 0.15]) and kl.yaxis == "y2"
    assert charts.feedback_figure(events) is not None


def test_orpo_figure_shows_both_loss_parts_and_the_log_odds_gap():
    events = feedback_events("orpo", nll_loss=2.0, log_odds_ratio=-0.5, log_odds_chosen=0.4)
    fig = charts.orpo_figure(events)
    assert list(trace(fig, "SFT part").y) == pytest.approx([2.0, 4.0, 6.0])
    assert list(trace(fig, "odds-ratio part").y) == pytest.approx([0.5, 1.0, 1.5])   # −log σ(gap)
    gap = trace(fig, "log-odds chosen − rejected")
    assert list(gap.y) == pytest.approx([0.4, 0.8, 1.2]) and gap.yaxis == "y2"
    # Read from the step fields when the start event is not there (a resumed run's tail).
    assert charts.feedback_method(events[1:]) == "orpo"
    assert charts.feedback_method(feedback_events("kto", kl=0.1, margin=0.2)[1:]) == "kto"


@pytest.mark.parametrize("method", ["dpo", "kto", "orpo"])
def test_feedback_figure_waits_for_a_new_run_and_is_none_for_sft(method):
    assert is_waiting(charts.feedback_figure([], method))
    assert charts.feedback_figure(sft_events(), "lora") is None
    assert charts.feedback_figure([], "lora") is None


@pytest.mark.parametrize("make", [charts.loss_figure, charts.lr_figure, charts.throughput_figure,
                                  lambda ev: charts.overlay_loss({"a": ev})])
@pytest.mark.parametrize("events", [[], [{"type": "start", "time": 0.0, "method": "lora"}], None])
def test_empty_events_give_a_waiting_figure(make, events):
    fig = make(events)
    assert isinstance(fig, go.Figure) and is_waiting(fig) and len(fig.data) == 0


def test_empty_series_have_columns():
    s = charts.series([])
    assert s["train"].empty and "loss" in s["train"].columns and "eval_loss" in s["eval"].columns
    assert charts.dpo_figure([]) is None
    assert is_waiting(charts.overlay_loss({}))


def test_overlay_two_runs():
    fig = charts.overlay_loss({"run-a": sft_events(4, loss0=3.0), "run-b": sft_events(6, eval_every=3, loss0=2.0)})
    a, b = trace(fig, "run-a"), trace(fig, "run-b")
    assert list(a.x) == [1, 2, 3, 4] and list(b.x) == [1, 2, 3, 4, 5, 6]
    assert list(b.y)[0] == pytest.approx(1.75)
    ea, eb = trace(fig, "run-a (eval)"), trace(fig, "run-b (eval)")
    assert ea.line.dash == eb.line.dash == "dash" and list(eb.x) == [3, 6]
    assert ea.line.color == a.line.color and a.line.color != b.line.color
    assert len(fig.data) == 4 and not is_waiting(fig)


# --------------------------------------------------------------------------- what a user reads (issue 15)


def one_step(lr=2e-4, loss=2.5):
    return [{"type": "start", "method": "lora"},
            {"type": "step", "step": 1, "loss": loss, "lr": lr, "tokens_per_s": 3953.3633}]


def test_a_single_point_or_flat_values_get_a_range_from_zero():
    # Plotly pads all-equal values by ±1: 2e-4 sat on a −1…1 axis and read as 0.
    assert charts.lr_figure(one_step()).layout.yaxis.range == pytest.approx((0.0, 2.2e-4))
    constant = one_step() + [{"type": "step", "step": s, "loss": 2.0, "lr": 2e-4} for s in (2, 3)]
    assert charts.lr_figure(constant).layout.yaxis.range == pytest.approx((0.0, 2.2e-4))
    assert charts.loss_figure(one_step()).layout.yaxis.range == pytest.approx((0.0, 2.75))
    negative = charts.fit_flat_axis(go.Figure(go.Scatter(x=[1, 2], y=[-3.0, -3.0])))
    assert negative.layout.yaxis.range == pytest.approx((-3.3, 0.0))
    # Values that differ keep plotly's autorange.
    assert charts.lr_figure(sft_events()).layout.yaxis.range is None


def test_overlay_legend_sits_under_the_plot_not_over_the_title():
    ids = [f"20261128-1{i}1010-2{i}-walk-{m}" for i, m in enumerate(["full", "lora", "qlora", "interrupted"])]
    fig = charts.overlay_loss({run_id: sft_events(4) for run_id in ids})
    legend = fig.layout.legend
    # At the top (y=1, right-aligned) the long run ids wrapped into rows across the title.
    assert legend.yref == "container" and legend.yanchor == "bottom" and legend.y == 0
    assert fig.layout.margin.b >= 40 + 22 * 2 and fig.layout.height > charts.HEIGHT
    # One legend entry a run: the eval lines (dashed, same colour) stay out of it.
    assert [t.name for t in fig.data if t.showlegend is not False] == ids
    assert "dashed: eval" in fig.layout.title.text


def test_numbers_for_people():
    assert charts.fmt_count(2442240) == "2.44 M" and charts.fmt_count(134515008) == "135 M"
    assert charts.fmt_count(1.2e9) == "1.2 B" and charts.fmt_count(950) == "950" and charts.fmt_count(None) == "—"
    assert charts.fmt_mb(3953.3633) == "3,953 MB" and charts.fmt_mb(12.73) == "12.7 MB"
    assert charts.fmt_minutes(2.54) == "2.5 min" and charts.fmt_minutes(0.3) == "18 s"
    ticks = charts.log_ticks(2e5, 3e8)
    assert ticks["tickvals"] == [1e5, 1e6, 1e7, 1e8, 1e9] and ticks["ticktext"] == ["100k", "1M", "10M", "100M", "1B"]


def test_runs_table_status_column_fits_its_longest_word():
    """In a 1400 px window the Runs table is 1214 px wide; its cells are monospace (~8.2 px a
    character at 13.6 px) with 8 px padding each side. At 8% the status column (97 px) broke
    "interrupted" mid-word ("interrupt|ed")."""
    from tunelab.ui import logic, runs_logic

    share = float(runs_logic.RUN_COLUMN_WIDTHS[runs_logic.RUN_COLUMNS.index("status")].rstrip("%")) / 100
    longest = max(map(len, logic.TERMINAL + logic.LIVE))
    assert share * 1214 >= longest * 8.2 + 16
    assert sum(float(w.rstrip("%")) for w in runs_logic.RUN_COLUMN_WIDTHS) == pytest.approx(100)

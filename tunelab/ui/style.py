"""The app's look: a Soft theme with system fonts (nothing fetched from a font CDN) and a
little CSS for the HTML panels that logic.py renders (class names all start with `tl-`)."""

HEADER = """
<div class="tl-header">
  <h1>TuneLab</h1>
  <p>A hands-on lab for fine-tuning language models. Pick a method, a model and a dataset, press
  Start, and watch the loss fall; chat with the base and the tuned model side by side, label which
  answer is better (or give one answer a thumbs up or down), and train DPO, KTO or ORPO on your labels.
  Every run is a <code>python -m tunelab train</code> process with its own folder in the workspace.</p>
  <div class="tl-chips"><span><b>full</b> every weight</span><span><b>LoRA</b> low-rank adapters</span>
  <span><b>QLoRA</b> adapters on a 4-bit base</span><span><b>DPO</b> learn from preferences</span>
  <span><b>KTO</b> learn from thumbs up / down</span><span><b>ORPO</b> preferences, no reference model</span></div>
</div>
"""

CSS = """
.gradio-container {max-width: 1320px !important; margin: 0 auto !important}
.tl-header {padding: 18px 24px; border-radius: 14px; color: #fff;
  background: linear-gradient(120deg, #4338ca 0%, #6d28d9 55%, #be185d 100%)}
.tl-header h1 {margin: 0; font-size: 1.75rem; color: #fff; letter-spacing: -.01em}
.tl-header p {margin: 6px 0 0; color: #eef2ff; max-width: 880px; font-size: .95rem}
.tl-header code {background: rgba(255,255,255,.16); color: #fff; padding: 0 5px; border-radius: 4px}
.tl-chips span {display: inline-block; padding: 2px 11px; border-radius: 999px; margin: 10px 6px 0 0;
  background: rgba(255,255,255,.16); font-size: .82rem}
.tl-section {font-weight: 600; font-size: .95rem; margin: 2px 0 -4px; opacity: .85}
.tl-method {padding: 10px 14px; border-radius: 10px; font-size: .9rem; line-height: 1.45;
  background: #eef2ff; color: #1e1b4b; border-left: 4px solid #6366f1}
.tl-stats {display: flex; gap: 10px; flex-wrap: wrap}
.tl-stat {flex: 1 1 130px; padding: 10px 14px; border-radius: 12px;
  background: var(--background-fill-secondary); border: 1px solid var(--border-color-primary)}
.tl-stat-v {font-size: 1.4rem; font-weight: 700; letter-spacing: -.01em}
.tl-stat-l {font-size: .78rem; opacity: .72; line-height: 1.3}
.tl-est {padding: 2px 0}
.tl-membar {display: flex; height: 10px; border-radius: 6px; overflow: hidden; margin: 12px 0 6px;
  background: var(--background-fill-secondary)}
.tl-legend {display: flex; flex-wrap: wrap; gap: 3px 12px; font-size: .76rem; opacity: .85}
.tl-legend i {display: inline-block; width: 9px; height: 9px; border-radius: 2px; margin-right: 4px}
.tl-notes {font-size: .78rem; opacity: .75; margin: 8px 0 0 16px; padding: 0}
.tl-progress {padding: 12px 14px; border-radius: 12px; border: 1px solid var(--border-color-primary);
  background: var(--background-fill-primary)}
.tl-empty {opacity: .75; font-size: .92rem}
.tl-progress-head {display: flex; gap: 10px; align-items: center; flex-wrap: wrap; margin-bottom: 8px}
.tl-run {font-family: var(--font-mono); font-size: .85rem}
.tl-state-line {font-size: .85rem; opacity: .75}
.tl-bar {height: 12px; border-radius: 999px; overflow: hidden; background: var(--background-fill-secondary);
  border: 1px solid var(--border-color-primary)}
.tl-bar-fill {height: 100%; background: linear-gradient(90deg, #6366f1, #a855f7); transition: width .6s ease}
.tl-fill-finished {background: #22c55e} .tl-fill-stopped {background: #f59e0b}
.tl-fill-failed, .tl-fill-interrupted {background: #ef4444}
.tl-progress-meta {margin-top: 7px; font-size: .88rem; font-variant-numeric: tabular-nums}
.tl-badge {display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: .72rem; font-weight: 700;
  text-transform: uppercase; letter-spacing: .04em; background: #e0e7ff; color: #3730a3}
.tl-running, .tl-starting {background: #dbeafe; color: #1d4ed8}
.tl-finished {background: #dcfce7; color: #166534}
.tl-stopped {background: #fef3c7; color: #92400e}
.tl-failed, .tl-interrupted {background: #fee2e2; color: #991b1b}
.tl-queued, .tl-cancelled {background: #f1f5f9; color: #475569}
.tl-msg {padding: 8px 12px; border-radius: 8px; font-size: .88rem; margin: 6px 0; line-height: 1.4}
.tl-msg-info {background: #eff6ff; color: #1e3a8a}
.tl-msg-ok {background: #f0fdf4; color: #166534; border: 1px solid #bbf7d0}
.tl-msg-warn {background: #fffbeb; color: #92400e; border: 1px solid #fde68a}
.tl-msg-error {background: #fef2f2; color: #991b1b; border: 1px solid #fecaca; white-space: pre-wrap}
.tl-msg code {font-family: var(--font-mono); font-size: .92em; padding: 0 4px; border-radius: 4px;
  background: rgba(0, 0, 0, .06); overflow-wrap: anywhere}
/* Arena tables: Gradio sizes each column to its longest cell, up to the table's whole width
   (--df-max-col-width), so a long run name or prompt pushed the rest past the right edge.
   Capped columns and wrapping cells (long names too) make a table fit its column; should one
   still be wider, its scrollbar is drawn (overlay scrollbars stay hidden until scrolled). */
.tl-table [style*="--df-max-col-width"] {--df-max-col-width: 180px !important}
.tl-table tbody td, .tl-table tbody td .cell-wrap {white-space: normal; overflow-wrap: anywhere}
/* A header is one or two short words: kept whole ("vote", not "vot|e"), the column widens. */
.tl-table thead th, .tl-table thead th * {white-space: nowrap; overflow-wrap: normal; word-break: keep-all}
.tl-table .virtual-table-viewport::-webkit-scrollbar {height: 10px}
.tl-table .virtual-table-viewport::-webkit-scrollbar-thumb {background: #c7cbd6; border-radius: 6px}
.tl-hint {font-size: .84rem; opacity: .75; margin: 2px 0}
.tl-example {padding: 10px 12px; margin: 0 0 10px; border-radius: 12px; border: 1px solid var(--border-color-primary)}
.tl-example-h {font-size: .72rem; text-transform: uppercase; letter-spacing: .05em; opacity: .6; margin-bottom: 4px}
.tl-turn {padding: 7px 11px; border-radius: 12px; margin: 5px 0; max-width: 88%; font-size: .9rem;
  line-height: 1.4; white-space: pre-wrap; width: fit-content}
.tl-user {background: #eef2ff; color: #1e1b4b}
.tl-assistant {background: #f0fdf4; color: #14532d; margin-left: auto}
.tl-system {background: #f4f4f5; color: #3f3f46; font-style: italic}
.tl-trained {box-shadow: inset 3px 0 0 #22c55e}
.tl-role {display: block; font-size: .66rem; text-transform: uppercase; letter-spacing: .05em; opacity: .6;
  font-weight: 700; font-style: normal}
.tl-pair {display: grid; grid-template-columns: 1fr 1fr; gap: 8px; margin-top: 4px}
.tl-pair .tl-turn {max-width: 100%; margin-left: 0}
.tl-chosen {border: 1px solid #86efac; border-radius: 10px; padding: 4px 8px}
.tl-rejected {border: 1px solid #fca5a5; border-radius: 10px; padding: 4px 8px}
.tl-pair-h {font-size: .75rem; font-weight: 700}
.tl-chosen .tl-pair-h {color: #16a34a} .tl-rejected .tl-pair-h {color: #dc2626}
.tl-diffwrap {overflow-x: auto}
.tl-difftable {border-collapse: collapse; width: 100%; font-size: .82rem}
.tl-difftable, .tl-difftable tr, .tl-difftable th, .tl-difftable td {border: none !important}
.tl-difftable th, .tl-difftable td {padding: 5px 10px; text-align: left; font-family: var(--font-mono);
  border-bottom: 1px solid var(--border-color-primary) !important; overflow-wrap: break-word}
.tl-difftable th {font-weight: 700; font-family: var(--font)}
.tl-difftable tr.tl-diff td {background: #fef9c3; color: #713f12; font-weight: 600}
.tl-field {opacity: .8}
.tl-run-details {line-height: 1.6}
#train-start, #train-stop {min-height: 46px}
.tl-vote-a, .tl-vote-b {font-weight: 700}
#arena-chat-a, #arena-chat-b {border-radius: 12px}
"""

# Arena shortcuts: 1/a = A is better, 2/b = B, 3/t = tie, 4/x = both bad; in the one-model
# tab u/+ = 👍 and d/- = 👎. They click the visible, enabled button of the current tab, and
# never fire while typing.
SHORTCUTS = """
<script>
document.addEventListener("keydown", (e) => {
  const t = e.target;
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.isContentEditable)) return;
  const vote = {"1": "a", "a": "a", "2": "b", "b": "b", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad",
                "u": "up", "+": "up", "d": "down", "-": "down"}[e.key.toLowerCase()];
  if (!vote) return;
  const buttons = document.querySelectorAll(`button.tl-vote-${vote}, .tl-vote-${vote} button`);
  const btn = [...buttons].find((b) => b.offsetParent !== null && !b.disabled);
  if (btn) { e.preventDefault(); btn.click(); }
});
</script>
"""

# A Plotly figure drawn while its tab is hidden (the Train tab's charts following a run
# started from the Arena, the Runs tab's overlay filled at page load) finds its box 0 px
# wide, falls back to Plotly's default 700 px and keeps that when the tab is shown: cut
# off at the right. Gradio refits figures only on a window resize, so when a tab panel
# comes into view (its width goes from 0 to more), its figures are fitted to their boxes.
FIT_PLOTS = """
<script>
(() => {
  const panels = document.getElementsByClassName("tabitem");   // live: a tab mounts on its first view
  const widths = new WeakMap();
  const shown = new ResizeObserver((entries) => {
    for (const e of entries) {
      const was = widths.get(e.target) ?? 0;
      widths.set(e.target, e.contentRect.width);
      if (was > 0 || !e.contentRect.width || !window.Plotly) continue;
      for (const gd of e.target.querySelectorAll(".js-plotly-plot")) {
        if (gd._fullLayout && Math.abs(gd._fullLayout.width - gd.clientWidth) > 1) {
          window.Plotly.Plots.resize(gd).catch(() => {});
        }
      }
    }
  });
  let seen = 0;
  new MutationObserver(() => {
    if (panels.length === seen) return;
    seen = panels.length;
    for (const p of panels) shown.observe(p);
  }).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""

# A figure drawn full width and then given half of it (the DPO view's first column when a
# second run is picked beside it) keeps its old width: refit every figure to its box.
REFIT_PLOTS_JS = """() => { setTimeout(() => {
  for (const gd of document.querySelectorAll(".js-plotly-plot")) {
    if (window.Plotly && gd._fullLayout && gd.clientWidth && Math.abs(gd._fullLayout.width - gd.clientWidth) > 1) {
      window.Plotly.Plots.resize(gd).catch(() => {});
    }
  }
}, 100); }"""


def theme():
    import gradio as gr

    return gr.themes.Soft(
        primary_hue="indigo", secondary_hue="violet", neutral_hue="slate", radius_size="md",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )

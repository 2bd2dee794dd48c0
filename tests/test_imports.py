"""The ML stack is imported one thread at a time (tunelab/common/imports.py): transformers is not
safe to import from two threads at once, and the app's event handlers run in threads (CI saw
"cannot import name 'AutoTokenizer'" from a dataset upload while the app imported the stack)."""

import subprocess
import sys
import textwrap

import pytest

from tunelab.common import imports

# Run in a fresh interpreter, where transformers is not imported yet: while this thread holds
# the gate, another thread's tokenizer and model loads wait for it before they import
# transformers, and finish once it is let go. (If they did not wait, they would have imported
# transformers by the time the join below gives up: the check can only fail when it should.)
WAITS_FOR_THE_GATE = textwrap.dedent("""
    import sys, threading
    from tunelab.common.imports import one_at_a_time
    from tunelab.modelio import loading
    done = {}
    def load():
        done["tokenizer"] = loading.load_tokenizer(sys.argv[1])
        done["model"] = loading.load_model(sys.argv[2])
    with one_at_a_time():
        worker = threading.Thread(target=load)
        worker.start()
        worker.join(3)
        assert worker.is_alive() and "transformers" not in sys.modules, sorted(m for m in sys.modules if "transformers" in m)[:3]
    worker.join()
    assert done["tokenizer"].pad_token is not None and done["model"].config.model_type == "llama"
    print("waited")
""")


def test_tokenizer_and_model_loads_wait_for_another_threads_import(bundled_model_dir, tiny_model_dir):
    out = subprocess.run([sys.executable, "-c", WAITS_FOR_THE_GATE, bundled_model_dir, tiny_model_dir],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "waited" in out.stdout, out.stderr[-2000:]


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    """Names of real modules new to this process: `good_N` imports, `bad` raises."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = {"good": f"tunelab_gate_ok_{tmp_path.name}", "bad": f"tunelab_gate_bad_{tmp_path.name}"}
    (tmp_path / f"{names['good']}.py").write_text("COUNT = 1\n")
    (tmp_path / f"{names['bad']}.py").write_text("raise RuntimeError('broken on purpose')\n")
    yield names
    for name in names.values():
        sys.modules.pop(name, None)


def test_import_serially_imports_once_and_raises_the_real_error(throwaway):
    imports.import_serially([throwaway["good"]])
    assert sys.modules[throwaway["good"]].COUNT == 1
    with pytest.raises(RuntimeError, match="broken on purpose"):
        imports.import_serially([throwaway["bad"]])


def test_import_ahead_passes_over_a_broken_module_and_stops_when_asked(throwaway):
    assert imports.import_ahead([throwaway["bad"], throwaway["good"]])
    assert throwaway["good"] in sys.modules and throwaway["bad"] not in sys.modules
    sys.modules.pop(throwaway["good"])
    assert not imports.import_ahead([throwaway["good"]], stopped=lambda: True)
    assert throwaway["good"] not in sys.modules

"""Models in: where a model comes from, how it loads, and whether the hub answers.

    models.py    a model name to a folder or hub id: the bundled model (converted once), a local folder, a
                 hub id; ModelError for every user mistake
    loading.py   loading a tokenizer and weights in a dtype on a device, 4-bit through bitsandbytes (QLoRA);
                 parameter counts, native bf16
    hub.py       whether the Hugging Face hub answers from this machine: asked once, in the background

Models out (merged, adapter, GGUF, Modelfile, card) are in tunelab/export/.

Import the module you need: `from tunelab.modelio.models import resolve_model`.
"""

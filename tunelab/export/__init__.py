"""Models out: a finished run as a folder, a GGUF file, an Ollama Modelfile, with its model card.

    source.py       ExportSource: the run an export reads (folder, model, status, summary, config),
                    built by `tunelab.training.runs.export_source(ref)`
    folder.py       export_folder: the adapter as saved, or one merged standalone model; merged_model
    ggufexport.py   export_gguf: the run as GGUF for llama.cpp / Ollama, with a Modelfile and a card,
                    measured against the run (`fidelity`)
    gguf_out.py     writing and reading GGUF files: a whole model, or a LoRA adapter
    ollama.py       the Ollama Modelfile beside an exported GGUF
    card.py         the model card (README.md) written into every export
    fidelity.py     is an exported file still the run? (export_figures.json: each type measured)

This package sits below `training/` and `arena/`: it never looks a run up, and what it needs from
them (the run, how the arena last used it) is passed in. Import the module you need:
`from tunelab.export.folder import export_folder`.
"""

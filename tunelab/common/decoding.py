"""The decoding every comparison of a base and a tuned model starts from.

The arena's defaults, the labs' checks, the Inside tab's token shift and the Ollama Modelfile a
GGUF export writes all use these, so they live below all of them.

FAIR_SAMPLING is SmolLM2's recommended sampling (its model card: temperature 0.2, top-p 0.9)
with a fixed seed. Greedy decoding loops on a small base ("Boil an egg: Boil an egg: ..."), and
the tuning would get the credit for a decoder that stops looping.
"""

FAIR_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "seed": 0}
ANSWER_TOKENS = 128   # the arena's answer length: the most new tokens an answer runs to by default

"""The GenEval world's tokenizer and processor files (`train/configs/geneval/processor/`).

Why its own: the shapes world's tokenizer encodes any text (byte-level BPE), but the words it never saw
(photo, diamond, cross, counts, plurals, relations, yes / no …) fall apart into single bytes, and the
longest canonical generation prompt then needs 32 tokens, the whole `gen_prompt_len` of the shapes
configs. This one is the same recipe (`janusflow_jax.shapes.tokenizer`: byte-level BPE with no vocabulary
limit, the seven special tokens in the fixture's order, the BOS post-processor, the one-space-stripping
decoder) trained on every string the GenEval world puts through the processor, and the same five files
(written by `shapes.tokenizer.train_tokenizer` itself, given this world's corpus). Its vocabulary fits
the shapes model configs (`vocab_size` 512). Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

from janusflow_jax import processing
from janusflow_jax.geneval import world
from janusflow_jax.shapes import tokenizer as shapes_tokenizer
from janusflow_jax.shapes.tokenizer import IMAGE_START_TAG, IMAGE_TAG


def prompt_texts(sft_format: str = "deepseek_old") -> list[str]:
    """Every full text the GenEval world puts through the tokenizer (special tags included), sorted."""
    user, assistant = shapes_tokenizer.template_roles(sft_format)
    out: set[str] = set()
    for text in world.corpus_strings():  # each world string alone, and after a space (mid-text)
        out.update((text, " " + text))
    for spec in world.all_specs():
        for cap in world.captions(spec):
            msgs = [{"role": user, "content": cap}, {"role": assistant, "content": ""}]
            out.add(processing.sft_prompt(msgs, system_prompt="") + IMAGE_START_TAG)  # generation
        for _, q, ans in world.qa(spec, 0):
            msgs = [{"role": user, "content": f"{IMAGE_TAG}\n{q}"}, {"role": assistant, "content": ""}]
            for system in (processing.SYSTEM_PROMPT, ""):  # understanding (+ answer)
                out.add(processing.sft_prompt(msgs, system) + " " + ans + processing.EOS_TEXT)
    return sorted(out)


def training_corpus(sft_format: str = "deepseek_old") -> list[str]:
    """`prompt_texts` cut at the special tags (as encoding sees them), empty pieces dropped."""
    return shapes_tokenizer.cut_at_special_tokens(prompt_texts(sft_format))


def build_tokenizer(sft_format: str = "deepseek_old"):
    """The trained `tokenizers.Tokenizer` (the shapes recipe on this world's corpus)."""
    return shapes_tokenizer.build_tokenizer(sft_format, corpus=training_corpus(sft_format))


def train_tokenizer(
    out_dir: str,
    *,
    num_image_tokens: int = 64,
    image_size: int = 64,
    sft_format: str = "deepseek_old",
) -> str:
    """Writes the five processor files of a JanusFlow checkpoint folder into `out_dir` (loadable by
    `janusflow_jax.processing.Processor`) and returns `out_dir`: the shapes writer
    (`shapes.tokenizer.train_tokenizer`) run on this world's corpus."""
    return shapes_tokenizer.train_tokenizer(
        out_dir,
        num_image_tokens=num_image_tokens,
        image_size=image_size,
        sft_format=sft_format,
        corpus=training_corpus(sft_format),
    )


if __name__ == "__main__":  # python -m janusflow_jax.geneval.tokenizer [out_dir]
    import sys

    print(train_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "train/configs/geneval/processor"))

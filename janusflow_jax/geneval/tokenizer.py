"""The GenEval world's tokenizer and processor files (`train/configs/geneval/processor/`).

Why its own: the shapes world's tokenizer encodes any text (byte-level BPE), but the words it never saw
(photo, diamond, cross, counts, plurals, relations, yes / no …) fall apart into single bytes, and the
longest canonical generation prompt then needs 32 tokens, the whole `gen_prompt_len` of the shapes
configs. This one is the same recipe (`janusflow_jax.shapes.tokenizer`: byte-level BPE with no vocabulary
limit, the seven special tokens in the fixture's order, the BOS post-processor, the one-space-stripping
decoder) trained on every string the GenEval world puts through the processor, and the same five files
(the four configuration files come from `shapes.tokenizer.train_tokenizer` itself). Its vocabulary fits
the shapes model configs (`vocab_size` 512). Deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import json
import os
import re

from janusflow_jax import processing
from janusflow_jax.geneval import world
from janusflow_jax.shapes import tokenizer as shapes_tokenizer
from janusflow_jax.shapes.tokenizer import IMAGE_START_TAG, IMAGE_TAG, SPECIAL_TOKENS


def prompt_texts(sft_format: str = "deepseek_old") -> list[str]:
    """Every full text the GenEval world puts through the tokenizer (special tags included), sorted."""
    user, assistant = processing.TEMPLATES[sft_format]
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
    pat = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    return sorted({p for t in prompt_texts(sft_format) for p in pat.split(t) if p})


def build_tokenizer(sft_format: str = "deepseek_old"):
    """The trained `tokenizers.Tokenizer` (the shapes recipe on this world's corpus)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if sft_format not in processing.TEMPLATES:
        raise ValueError(f"unknown sft_format {sft_format!r}; one of {sorted(processing.TEMPLATES)}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=1 << 16,  # no limit in practice: merging stops when every pre-token is whole
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(training_corpus(sft_format), trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos = processing.BOS_TEXT
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tok.decoder = decoders.Sequence([decoders.ByteLevel(), decoders.Strip(" ", 1, 0)])
    return tok


def train_tokenizer(
    out_dir: str,
    *,
    num_image_tokens: int = 64,
    image_size: int = 64,
    sft_format: str = "deepseek_old",
) -> str:
    """Writes the five processor files of a JanusFlow checkpoint folder into `out_dir` (loadable by
    `janusflow_jax.processing.Processor`) and returns `out_dir`: the shapes writer's configuration
    files, with this world's `tokenizer.json` and its special-token ids in `tokenizer_config.json`."""
    shapes_tokenizer.train_tokenizer(
        out_dir, num_image_tokens=num_image_tokens, image_size=image_size, sft_format=sft_format
    )
    tok = build_tokenizer(sft_format)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        f.write(tok.to_str(pretty=True))
        f.write("\n")
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    old = {v["content"]: v for v in cfg["added_tokens_decoder"].values()}
    cfg["added_tokens_decoder"] = {str(tok.token_to_id(t)): old[t] for t in SPECIAL_TOKENS}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return out_dir


if __name__ == "__main__":  # python -m janusflow_jax.geneval.tokenizer [out_dir]
    import sys

    print(train_tokenizer(sys.argv[1] if len(sys.argv) > 1 else "train/configs/geneval/processor"))

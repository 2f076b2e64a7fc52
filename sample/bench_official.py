"""Time the OFFICIAL PyTorch JanusFlow pipeline at the `bench` geometry, to run beside sample/bench.py.

Not part of the package or the tests: it imports the official `janus` package from a checkout of
github.com/deepseek-ai/Janus and needs its own environment (the versions of the stored baseline):

    python -m venv /tmp/offenv
    /tmp/offenv/bin/pip install torch==2.13.0 transformers==4.47.1 diffusers==0.32.2 timm==1.0.31 \\
        attrdict einops safetensors
    /tmp/offenv/bin/python sample/bench_official.py --janus-src ~/Janus --save /tmp/benchw
    python sample/bench.py --weights /tmp/benchw      # janusflow-jax on the same weights

It builds `MultiModalityCausalLM` from sample/configs/bench/config.json (seeded random weights; the
widths the official code hard-codes are replaced by `hardcoded_dims`, its SigLIP table gets the
`siglip_vit_cfg` entry), then times, after a warm-up, the median of `--repeats` runs of
  * generation as the official demo samples: CFG rows stacked, 10 Euler steps, the whole prompt
    recomputed at every step (the official cache is emptied after step 0), then the VAE decode;
  * understanding as the official demo answers: `prepare_inputs_embeds` + `language_model.generate`,
    greedy, 32 new tokens after the 816-token prompt.
`--save DIR` writes those weights in the official layout (config.json, model.safetensors,
vae/) for `sample/bench.py --weights DIR`. timm imports torchvision, which has no CPU wheel for
this torch; if it is missing an inert stand-in module is installed (the SigLIP forward never uses it).
"""

import argparse
import importlib.abc
import importlib.machinery
import json
import os
import shutil
import statistics
import sys
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def _stand_in_torchvision():
    """An inert `torchvision` (module attributes resolve to dummies) so that timm imports."""

    class _Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return f"{cls.__name__}.{name}"

    class _Module(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            if name[:1].isupper():
                return _Meta(name, (object,), {})
            return importlib.import_module(f"{self.__name__}.{name}")

    class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):
            if fullname == "torchvision" or fullname.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):
            m = _Module(spec.name)
            m.__path__ = []
            m.__version__ = "0.0.0"
            return m

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, _Finder())


def timed(fn, repeats):
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, statistics.median(times), times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--janus-src", required=True, help="checkout of github.com/deepseek-ai/Janus")
    ap.add_argument("--size", default="bench", choices=["bench"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--what", default="gen,und")
    ap.add_argument("--save", default="", help="write the weights here in the official layout")
    args = ap.parse_args(argv)

    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        _stand_in_torchvision()
    sys.path.insert(0, os.path.abspath(args.janus_src))
    try:
        import torch
        from diffusers.models import AutoencoderKL
        from janus.janusflow.models import MultiModalityCausalLM, siglip_vit
        from janus.janusflow.models.modeling_vlm import MultiModalityConfig
        from torch import nn
        from transformers.models.llama.modeling_llama import LlamaRMSNorm
    except ImportError as e:  # torch, transformers, diffusers, timm are not janusflow-jax dependencies
        print(
            f"bench_official.py: {e}. It runs the official PyTorch code and needs torch, transformers, "
            "diffusers, timm and the official janus package (--janus-src); see the top of this file "
            "for the environment.",
            file=sys.stderr,
        )
        return 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    folder = os.path.join(HERE, "configs", args.size)
    raw = json.load(open(os.path.join(folder, "config.json")))
    settings = json.load(open(os.path.join(folder, "bench_settings.json")))
    und = raw["vision_und_enc_config"]["params"]
    siglip_vit.SigLIP_MODEL_CONFIG[und["model_name"]] = und["siglip_vit_cfg"]
    cfg = MultiModalityConfig(**raw)
    model = MultiModalityCausalLM(cfg)
    hd = raw["hardcoded_dims"]
    model.vision_und_enc_aligner = nn.Linear(*hd["vision_und_enc_aligner"])
    model.beg_of_und_embed = nn.Parameter(torch.randn(*hd["beg_of_und_embed"]) * 0.02)
    model.vision_gen_enc_aligner = nn.Linear(*hd["vision_gen_enc_aligner"])
    model.vision_gen_dec_aligner_norm = LlamaRMSNorm(hd["vision_gen_dec_aligner_norm"], eps=cfg.language_config.rms_norm_eps)
    model.vision_gen_dec_aligner = nn.Linear(*hd["vision_gen_dec_aligner"])
    model = model.float().eval()
    vae = AutoencoderKL.from_config(json.load(open(os.path.join(folder, "vae_config.json")))).float().eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)

    if args.save:
        from safetensors.torch import save_file

        os.makedirs(args.save, exist_ok=True)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(args.save, "model.safetensors"))
        shutil.copy(os.path.join(folder, "config.json"), args.save)
        vae.save_pretrained(os.path.join(args.save, "vae"), safe_serialization=True)
        print(f"weights written to {args.save}", flush=True)

    bos, pad, image_tag = 256, 258, 260  # the bench's byte-level tokenizer (see shared/reference)
    out = {"torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability()}

    if "gen" in args.what:
        steps, batch, w = settings["num_steps"], settings["gen_batch"], settings["cfg_weight"]
        c, h, wd = settings["latent"]
        gen_ch = hd["vision_gen_dec_aligner"][1]
        n_img = (h // 2) * (wd // 2)
        text = f"User: {settings['gen_prompt']}\n\nAssistant:".encode()
        ids = torch.tensor([bos] + list(text) + [image_tag], dtype=torch.long)
        z0 = torch.randn((batch, c, h, wd), generator=torch.Generator().manual_seed(1))

        @torch.inference_mode()
        def generate():
            rows = ids.repeat(2 * batch, 1)
            rows[batch:, 1:] = pad  # unconditional rows: BOS + pads, masked out below
            prompt = model.language_model.get_input_embeddings()(rows)[:, :-1]  # the tag's slot becomes t
            mask = torch.ones((2 * batch, prompt.shape[1] + 1 + n_img), dtype=torch.int)
            mask[batch:, 1 : prompt.shape[1]] = 0
            z, dt, cache = z0, 1.0 / steps, None
            for i in range(steps):
                zz = torch.cat([z, z])
                t = torch.full((zz.shape[0],), i / steps * 1000.0)
                x, t_emb, skip = model.vision_gen_enc_model(zz, t)
                x = model.vision_gen_enc_aligner(x.flatten(2).transpose(1, 2))
                seq = torch.cat([prompt, t_emb[:, None], x], dim=1)
                o = model.language_model.model(inputs_embeds=seq, attention_mask=mask, use_cache=True, past_key_values=cache)
                cache = ()  # as in the official loop: nothing is kept, every step recomputes the prompt
                y = model.vision_gen_dec_aligner(model.vision_gen_dec_aligner_norm(o.last_hidden_state[:, -n_img:]))
                y = y.reshape(zz.shape[0], h // 2, wd // 2, gen_ch).permute(0, 3, 1, 2)
                v_cond, v_uncond = model.vision_gen_dec_model(y, skip, t_emb).chunk(2)
                z = z + dt * (w * v_cond - (w - 1.0) * v_uncond)
            return vae.decode(z / vae.config.scaling_factor).sample

        first, med, all_t = timed(generate, args.repeats)
        print(f"official generation ({steps} steps, CFG batch {batch}, prompt {len(ids)} tokens, VAE decode "
              f"included): first call {first:.2f}s, median {med:.3f}s over {args.repeats}", flush=True)
        out["generation"] = dict(first_s=first, median_s=med, all_s=all_t)

    if "und" in args.what:
        n_new, n_prompt = settings["und_new_tokens"], 816
        side = und["siglip_vit_cfg"]["image_size"]
        n_img = (side // und["siglip_vit_cfg"]["patch_size"]) ** 2
        g = torch.Generator().manual_seed(2)
        ids = torch.randint(0, 256, (1, n_prompt), generator=g)
        ids[0, 0] = bos
        seq_mask = torch.zeros((1, n_prompt), dtype=torch.bool)
        seq_mask[0, 40 : 41 + n_img] = True
        emb_mask = torch.ones((1, 1, 1 + n_img), dtype=torch.bool)
        pixels = torch.randn((1, 1, 3, side, side), generator=g)
        attn = torch.ones((1, n_prompt), dtype=torch.long)

        @torch.inference_mode()
        def understand():
            emb = model.prepare_inputs_embeds(
                input_ids=ids.clone(), pixel_values=pixels, images_seq_mask=seq_mask, images_emb_mask=emb_mask
            )
            return model.language_model.generate(
                inputs_embeds=emb, attention_mask=attn, pad_token_id=pad, bos_token_id=bos, eos_token_id=257,
                max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, use_cache=True,
            )

        first, med, all_t = timed(understand, args.repeats)
        print(f"official understanding ({n_prompt}-token prompt, {n_new} new tokens): first call {first:.3f}s, "
              f"median {med:.3f}s over {args.repeats}", flush=True)
        out["understanding"] = dict(first_s=first, median_s=med, all_s=all_t)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the generation models: real ones from a hub id or local path, or tiny random ones.

The model id ``"tiny"`` (``TINY``) builds a small randomly initialised model from a config,
with a word-level tokenizer made in memory, so that every step runs on a CPU in seconds
without downloading anything (tests, ``configs/generation/tiny.py``). Any other id is passed
to ``from_pretrained`` and needs the weights (hub id or local folder).

- CLIP lives in generation/clip.py (``ClipEncoder``), built on ``word_level_tokenizer`` here.
- ``load_vlm(model, device, dtype)``: ``(processor, model)`` of an image-text-to-text VLM
  (default Qwen-VL through AutoProcessor + AutoModelForImageTextToText).
- ``load_wan_pipeline(model, ...)``: diffusers ``WanImageToVideoPipeline`` (Wan 2.2 I2V A14B).

Tiny models are built under a fixed torch seed, so two processes build identical weights
(a resumed run continues with the same model).
"""
from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Sequence

import torch

TINY = "tiny"
DEFAULT_VLM = "Qwen/Qwen2.5-VL-7B-Instruct"  # the paper used Qwen3 30B-A3B; any VLM id works
DEFAULT_WAN = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
TINY_SEED = 0

# Vocabulary of the tiny word-level tokenizers: enough words for class names, template
# phrases and VLM instructions to map mostly onto known tokens; the rest becomes <unk>.
_TINY_WORDS = sorted(set("""
a an the of in on at to and or with near from by is are as be it its into while another
generate behavior manifested person people man woman car vehicle bicycle bike cart truck
street road walkway campus store shop parking lot office counter shelf door crowd
walks walking runs running rides riding falls fights fighting chasing steals stealing grabs
throws throwing climbs climbing jumps jumping lifting skateboarding cycling wandering robbery
abuse arrest arson assault burglary explosion accident accidents shooting shoplifting
vandalism fire smoke glass bag item another individual abnormal normal activity scene camera
fixed static natural movement realistic surveillance footage cctv high view daytime night
black screen logo text overlay noisy image blurry you expert visual understanding only
describe most plausible consistent category output must single short sentence completing
pattern use elements clearly visible do not invent unseen objects persons weapons motions
keep action realistic grounded visually justified motion strictly prohibited , . "
""".split()))


def slug(text: str) -> str:
    """A file-safe short form of a name: lower case, [a-z0-9-] only."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def model_key(model: str) -> str:
    """A cache-folder name for a model id or path: readable tail plus a short hash."""
    digest = hashlib.sha256(model.encode("utf-8")).hexdigest()[:8]
    return f"{slug(model.rstrip('/').split('/')[-1])[:40]}-{digest}"


@contextlib.contextmanager
def fixed_seed(seed: int = TINY_SEED):
    """Build tiny random models under a fixed seed without disturbing the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def word_level_tokenizer(special: Sequence[str], *, words: Sequence[str] = _TINY_WORDS,
                         bos: str | None = None, eos: str | None = None, **special_tokens):
    """A PreTrainedTokenizerFast over a whitespace/word-level vocab, built without downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(list(special) + [w for w in words if w not in special])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=special[0]))
    # Split on whitespace and punctuation, lower-case nothing: unknown words map to <unk>.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins tokens with spaces
    if bos or eos:
        single = " ".join(t for t in (bos, "$A", eos) if t)
        tokenizer.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=special[0],
                                   bos_token=bos, eos_token=eos, **special_tokens)


# --------------------------------------------------------------------------- VLM

_TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}"
    " </s> {% endfor %}{% if add_generation_prompt %}assistant : {% endif %}")


def _tiny_vlm():
    """A tiny random LLaVA (CLIP vision tower + Llama) with a PIL processor and word tokenizer."""
    from transformers import AutoModelForImageTextToText, LlavaConfig, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = word_level_tokenizer(
        ["<unk>", "<pad>", "<s>", "</s>", "<image>", "user", "assistant", ":"],
        bos="<s>", eos="</s>", pad_token="<pad>", extra_special_tokens={"image_token": "<image>"})
    tokenizer._tokenizer.post_processor = None  # the chat template writes the markers itself
    # Qwen-VL processors need torchvision for their video processor; LLaVA's does not.
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, chat_template=_TINY_CHAT_TEMPLATE, patch_size=14,
        vision_feature_select_strategy="full", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, image_size=28, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="full", vision_feature_layer=-1)
    with fixed_seed():
        model = AutoModelForImageTextToText.from_config(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return processor, model


def tiny_vlm_dir(path) -> str:
    """Save the tiny VLM to `path` (a local folder loadable like any model id); return it."""
    processor, model = _tiny_vlm()
    processor.save_pretrained(path)
    model.save_pretrained(path)
    return str(path)


def load_vlm(model: str = DEFAULT_VLM, device: str = "cpu", dtype: str = "auto"):
    """`(processor, model)` of an image-text-to-text VLM: hub id, local path or "tiny"."""
    if model == TINY:
        processor, vlm = _tiny_vlm()
        return processor, vlm.to(device)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    vlm = AutoModelForImageTextToText.from_pretrained(
        model, dtype=dtype if dtype == "auto" else getattr(torch, dtype),
        device_map=device if device != "cpu" else None)
    return processor, vlm.eval()


# --------------------------------------------------------------------------- Wan 2.2 I2V

def _tiny_wan_pipeline():
    """A tiny random two-expert Wan 2.2 I2V pipeline (no image encoder, as in Wan 2.2)."""
    from diffusers import (AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline,
                           WanTransformer3DModel)
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = word_level_tokenizer(["<unk>", "<pad>", "</s>"], eos="</s>", pad_token="<pad>")
    z_dim = 4
    with fixed_seed():
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8)).eval()
        vae = AutoencoderKLWan(base_dim=4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True],
                               latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)

        def expert():
            # I2V input: noisy latents + first-frame latents + 4 mask channels.
            return WanTransformer3DModel(
                patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                in_channels=3 * z_dim, out_channels=z_dim, text_dim=16, freq_dim=16, ffn_dim=32,
                num_layers=1, rope_max_seq_len=64)

        transformer, transformer_2 = expert(), expert()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=5.0)
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                   scheduler=scheduler, transformer=transformer,
                                   transformer_2=transformer_2, boundary_ratio=0.9)


def load_wan_pipeline(model: str = DEFAULT_WAN, *, device: str = "cuda", dtype: str = "bfloat16",
                      cpu_offload: bool = False, vae_tiling: bool = False):
    """The Wan 2.2 image-to-video pipeline, with the memory options applied."""
    if model == TINY:
        pipe = _tiny_wan_pipeline()
    else:
        from diffusers import AutoencoderKLWan, WanImageToVideoPipeline

        torch_dtype = getattr(torch, dtype)
        # The Wan VAE is kept in float32 (as the model card does): bf16 decoding loses detail.
        vae = AutoencoderKLWan.from_pretrained(model, subfolder="vae", torch_dtype=torch.float32)
        pipe = WanImageToVideoPipeline.from_pretrained(model, vae=vae, torch_dtype=torch_dtype)
    if vae_tiling:
        pipe.vae.enable_tiling()
    if cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)  # the item loop has its own bar
    return pipe

"""`pavad-gen refine`: rewrite "Generate <class>" into a scene-grounded prompt with a VLM (CA-PAG).

PA-VAD Sec. 3.1.2 / supp. S1.2. For each plan item the VLM sees the initial image and the
instruction of S1.2 (for "normal" items, the same instruction asking for ordinary activity),
and answers one short sentence completing "Generate <class> behavior, manifested as ...".
Decoding is greedy (do_sample=False), so a rerun gives the same prompts. The answer is cut to
its first sentence and the template phrases g_tem are appended (Eq. 6):

    p = "<sentence>, natural movement, fixed camera."

``--no-refine`` is the paper's w/o-refine ablation: "Generate <class>" plus the template, no VLM.
Per-item results go to ``<workdir>/prompts/<id>.json``; once every item has one, the plan is
rewritten with ``prompt`` (and ``refined``: false where the VLM answer was unusable and the
coarse prompt was kept) on every line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from generation import workers
from generation.models import DEFAULT_VLM
from generation.step_settings import add_flags, from_args, setting

DEFAULT_TEMPLATE = ("natural movement", "fixed camera")
MIN_WORDS = 4  # a refined sentence shorter than this is treated as unusable

ANOMALY_INSTRUCTION = (
    "You are an expert in visual scene understanding and anomaly-behavior design. Given an input "
    "image and an anomaly category, describe the most plausible abnormal behavior consistent with "
    "both the scene and the category. Your output must be a single short sentence completing the "
    'pattern "Generate {category} behavior, manifested as ...". Use only elements clearly visible '
    "in the image. Do not invent unseen objects, persons, weapons, or motions. Keep the action "
    "realistic, scene-grounded, and visually justified. Camera motion is strictly prohibited.\n"
    "Anomaly category: {category}")
NORMAL_INSTRUCTION = (
    "You are an expert in visual scene understanding. Given an input image of a surveillance "
    "scene, describe the most plausible ordinary, normal activity consistent with the scene. Your "
    "output must be a single short sentence completing the pattern \"Generate {category}, "
    'manifested as ...". Use only elements clearly visible in the image. Do not invent unseen '
    "objects, persons, or motions. Keep the action realistic, scene-grounded, and visually "
    "justified. Camera motion is strictly prohibited.")


def coarse_prompt(item: dict) -> str:
    """The unrefined prompt "Generate <class text>"."""
    return f"Generate {item.get('text') or item['class']}"


def instruction_for(item: dict) -> str:
    """The S1.2 instruction for an item's class (or its normal-activity variant)."""
    template = NORMAL_INSTRUCTION if item.get("kind") == "normal" else ANOMALY_INSTRUCTION
    return template.format(category=item.get("text") or item["class"])


def with_template(sentence: str, template: tuple[str, ...] | list[str] = DEFAULT_TEMPLATE) -> str:
    """Eq. 6: the sentence (without its final stop) followed by the template phrases."""
    sentence = sentence.strip().rstrip(".!?;, ")
    return ", ".join([sentence, *template]) + "."


def first_sentence(text: str) -> str:
    """The first sentence of a VLM answer, without chat markers, markdown, quotes or labels."""
    text = re.sub(r"<[^>]{1,40}>", " ", text)  # leftover special tokens such as <|im_end|>
    for line in text.splitlines():
        line = line.strip().strip("*#>-` ").strip()
        line = re.sub(r"^(assistant|answer|output|prompt)\s*:\s*", "", line, flags=re.IGNORECASE)
        if line:
            break
    else:
        return ""
    # End at the first sentence stop followed by a space or the end (keeps "3.5 m").
    match = re.match(r"(.+?[.!?])(\s|$)", line)
    sentence = match.group(1) if match else line
    sentence = sentence.strip().strip("\"'“”‘’").strip()
    return re.sub(r"\s+", " ", sentence)


def postprocess(answer: str, item: dict, template=DEFAULT_TEMPLATE) -> tuple[str, bool]:
    """(final prompt, whether the VLM answer was used): one sentence, "Generate ...", template."""
    sentence = first_sentence(answer)
    if len(re.findall(r"[A-Za-z]+", sentence)) < MIN_WORDS:
        return with_template(coarse_prompt(item), template), False
    if not sentence.lower().startswith("generate"):
        sentence = f"Generate {sentence[0].lower()}{sentence[1:]}"
    return with_template(sentence, template), True


def vlm_answer(processor, model, image, instruction: str, max_new_tokens: int) -> str:
    """Greedy-decode the VLM's answer to one image + instruction."""
    import torch

    messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": instruction}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt").to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


@dataclasses.dataclass
class RefineSettings:
    """How the prompts of a plan are written (Eq. 5-6)."""

    plan: str | None = setting(None, "plan to refine; None: <workdir>/plan.jsonl")
    vlm_model: str = setting(DEFAULT_VLM, "any image-text-to-text model id or local path (AutoProcessor + "
                             "AutoModelForImageTextToText); 'tiny' = random tiny model")
    refine: bool = setting(True, "ask the VLM; --no-refine is the w/o-refine ablation: 'Generate <class>' plus "
                           "the template, no VLM")
    template: tuple[str, ...] = setting(DEFAULT_TEMPLATE, "template phrases g_tem appended to every prompt")
    max_new_tokens: int = setting(77, "VLM answer length limit")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    dtype: str = setting("auto", "VLM weights dtype: auto, bfloat16, float16, float32")


def run_refine(settings: RefineSettings, *, workdir: str, shard: tuple[int, int] = (0, 1)) -> Path | None:
    """Write prompts for this shard's plan items; rewrite the plan once all have one."""
    from PIL import Image

    s = settings
    refine, template = s.refine, s.template
    workdir = Path(workdir)
    plan_path = Path(s.plan) if s.plan else workdir / "plan.jsonl"
    items = workers.read_jsonl(plan_path)
    out_dir = workdir / "prompts"
    recorded = {"model": s.vlm_model if refine else None, "refine": refine, "template": list(template),
                "max_new_tokens": s.max_new_tokens}

    def finished(item):
        marker = workers.metadata_path(out_dir, item["id"])
        return marker.exists() and json.loads(marker.read_text())["settings"] == recorded

    index, count = shard
    mine = workers.items_for_shard(items, index, count)
    loaded = {}
    if refine and not all(finished(item) for item in mine):
        # Load before the item loop: a model that cannot load is an error, not 29 failed items.
        loaded["processor"], loaded["model"] = _load_vlm(s.vlm_model, workers.resolve_device(s.device), s.dtype)

    def refine_item(item):
        answer = None
        if refine:
            image = Image.open(workers.plan_file_path(plan_path, item["image"])).convert("RGB")
            answer = vlm_answer(loaded["processor"], loaded["model"], image, instruction_for(item),
                                s.max_new_tokens)
            prompt, used = postprocess(answer, item, template)
        else:
            prompt, used = with_template(coarse_prompt(item), template), False
        workers.atomic_write_json(workers.metadata_path(out_dir, item["id"]), {
            "id": item["id"], "prompt": prompt, "refined": used, "vlm_answer": answer,
            "coarse": coarse_prompt(item), "settings": recorded})

    summary = workers.run_items(mine, refine_item,
                                out_dir=out_dir, done=finished,
                                desc=f"refine (shard {index}/{count})")
    print(f"refine: {summary}")
    if not all(finished(item) for item in items):
        print("refine: not every item has a prompt yet (other shards, or failures in "
              f"{out_dir / 'errors.jsonl'}); the plan is updated once all have one")
        return None
    for item in items:
        result = json.loads(workers.metadata_path(out_dir, item["id"]).read_text())
        item["prompt"], item["refined"] = result["prompt"], result["refined"]
    workers.write_jsonl(plan_path, items)
    print(f"refine: prompts of {len(items)} items -> {plan_path}")
    return plan_path


def _load_vlm(model: str, device: str, dtype: str):
    """Load the VLM (kept apart so tests can count loads)."""
    from generation.models import load_vlm

    return load_vlm(model, device=device, dtype=dtype)


def register(subparsers) -> None:
    """Add the `refine` subcommand."""
    parser = subparsers.add_parser(
        "refine", help="VLM prompt refinement (CA-PAG, Eq. 5-6)", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="folder of `select` (prompts/ is written here)")
    add_flags(parser, RefineSettings)
    workers.add_shard_args(parser)
    parser.set_defaults(func=_main)


def _main(args) -> int:
    """Entry of `pavad-gen refine`."""
    run_refine(from_args(RefineSettings, args), workdir=args.workdir, shard=workers.resolve_shard(args))
    return 0

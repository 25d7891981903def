"""GV-VAD description repository: paired abnormal/normal video descriptions from four elements.

GV-VAD (papers/gv-vad.md, Sec. II-A) describes an anomaly by four elements (camera
viewpoint, location, subject, anomalous event) and asks a large language model for a
*pair* of descriptions: an abnormal one showing the event and a normal one of the same
viewpoint, location and subject with an ordinary event. This module

* loads the element lists of a dataset (shipped as JSON in ``gvvad/elements/``),
* draws ``num_pairs`` element tuples deterministically (round-robin over the classes),
* asks an instruct LLM (transformers, greedy decoding, so reruns give the same text) for
  each description, and
* writes the repository as JSON lines, one description per line, two lines per pair.

A description record: ``id``, ``pair_id``, ``kind`` ("abnormal" | "normal"), ``label``
(1 | 0), ``anomaly_class`` (the UCF-Crime class, "normal" for normal descriptions),
``pair_class`` (the class the pair was drawn for), ``viewpoint``, ``location``,
``subject``, ``event`` (the anomalous event, or the normal event for normal
descriptions), ``prompt``, ``text``, ``llm`` and ``fallback`` (true when the LLM returned
nothing usable and the template sentence was kept instead).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from generation import workers
from generation.step_settings import add_flags, from_args, setting

ELEMENTS_DIR = Path(__file__).resolve().parent / "elements"
DEFAULT_LLM = "Qwen/Qwen2.5-7B-Instruct"
TINY_LLM = "tiny"  # a randomly initialised Llama with a word-level tokenizer, for tests
SYSTEM_PROMPT = (
    "You write short descriptions of surveillance video clips that a text-to-video model "
    "will turn into videos. Answer with exactly one sentence and nothing else.")
_ELEMENT_KEYS = ("locations", "subjects", "events")


@dataclasses.dataclass(frozen=True)
class Elements:
    """The four GV-VAD elements of one pair, plus the normal event for its normal half."""

    anomaly_class: str
    viewpoint: str
    location: str
    subject: str
    event: str
    normal_event: str


# --------------------------------------------------------------------------- element lists

def _string_list(value: Any, where: str) -> list[str]:
    """Check that `value` is a non-empty list of non-empty strings; `where` names it in errors."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: expected a non-empty list of strings")
    for number, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{where}[{number}]: expected a non-empty string, got {item!r}")
    return value


def load_element_lists(source: str | Path) -> dict:
    """Load and validate element lists: a path to a JSON file or a shipped name ("ucf_crime")."""
    path = Path(source)
    if not path.suffix:
        path = ELEMENTS_DIR / f"{source}.json"
    if not path.is_file():
        shipped = sorted(p.stem for p in ELEMENTS_DIR.glob("*.json"))
        raise FileNotFoundError(f"element lists {source!r} not found (shipped: {shipped})")
    try:
        lists = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    _string_list(lists.get("viewpoints"), f"{path}: field 'viewpoints'")
    _string_list(lists.get("normal_events"), f"{path}: field 'normal_events'")
    classes = lists.get("classes")
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{path}: field 'classes' must map class names to element lists")
    for name, entry in classes.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: field 'classes.{name}' must be an object")
        for key in _ELEMENT_KEYS:
            _string_list(entry.get(key), f"{path}: field 'classes.{name}.{key}'")
    lists.setdefault("dataset", path.stem)
    return lists


def sample_elements(lists: dict, num_pairs: int, seed: int = 0,
                    classes: Sequence[str] | None = None) -> list[Elements]:
    """Draw `num_pairs` element tuples, cycling through the classes; same seed, same tuples."""
    names = list(classes) if classes else sorted(lists["classes"])
    unknown = sorted(set(names) - set(lists["classes"]))
    if unknown:
        raise ValueError(f"unknown classes {unknown}; the element lists have {sorted(lists['classes'])}")
    # One generator per class (string seeds hash stably), so adding a class keeps the others.
    rngs = {name: random.Random(f"gvvad-{seed}-{name}") for name in names}
    tuples = []
    for number in range(num_pairs):
        name = names[number % len(names)]
        rng, entry = rngs[name], lists["classes"][name]
        tuples.append(Elements(
            anomaly_class=name,
            viewpoint=rng.choice(lists["viewpoints"]),
            location=rng.choice(entry["locations"]),
            subject=rng.choice(entry["subjects"]),
            event=rng.choice(entry["events"]),
            normal_event=rng.choice(lists["normal_events"]),
        ))
    return tuples


# --------------------------------------------------------------------------- prompts

def abnormal_prompt(e: Elements) -> str:
    """The LLM request for the abnormal description of a tuple."""
    return (f"Elements: viewpoint: {e.viewpoint}; location: {e.location}; subject: {e.subject}; "
            f"anomalous event: {e.event}.\n"
            f"Describe in one sentence of at most 40 words a video seen from the {e.viewpoint} "
            f"at the {e.location}, in which the {e.subject} is {e.event}.")


def normal_prompt(e: Elements) -> str:
    """The LLM request for the paired normal description: same scene, ordinary event."""
    return (f"Elements: viewpoint: {e.viewpoint}; location: {e.location}; subject: {e.subject}; "
            f"normal event: {e.normal_event}.\n"
            f"Describe in one sentence of at most 40 words a calm, ordinary video seen from the "
            f"{e.viewpoint} at the {e.location}, showing the {e.subject} while people are "
            f"{e.normal_event}. Nothing unusual or dangerous happens.")


def template_description(e: Elements, kind: str) -> str:
    """A plain sentence from the elements, kept when the LLM gives nothing usable."""
    if kind == "abnormal":
        return f"From the {e.viewpoint} at the {e.location}, the {e.subject} is seen {e.event}."
    return (f"From the {e.viewpoint} at the {e.location}, the {e.subject} is seen while people "
            f"are {e.normal_event}; nothing unusual happens.")


def clean_description(text: str, max_words: int = 60) -> str:
    """First non-empty line of an LLM answer, without quotes or list markers, capped in words."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:[-*\d.)]+\s+|(?:abnormal|normal)?\s*description\s*:\s*)", "", line,
                      flags=re.IGNORECASE).strip().strip('"\'').strip()
        if line:
            return " ".join(line.split()[:max_words])
    return ""


# --------------------------------------------------------------------------- LLM

def tiny_vocabulary() -> list[str]:
    """Words and punctuation of the shipped element lists and prompts: the tiny models' vocabulary."""
    text = " ".join([SYSTEM_PROMPT] + [path.read_text(encoding="utf-8")
                                       for path in sorted(ELEMENTS_DIR.glob("*.json"))])
    return sorted(set(re.findall(r"[A-Za-z]+|[^\sA-Za-z]", text)))


def tiny_tokenizer():
    """A word-level tokenizer over `tiny_vocabulary()`, built in memory (no hub download)."""
    from generation.models import word_level_tokenizer

    return word_level_tokenizer(["<unk>", "<pad>", "<s>", "</s>"], words=tiny_vocabulary(),
                                bos="<s>", eos="</s>", pad_token="<pad>")


def tiny_llm(seed: int = 0):
    """A randomly initialised 2-layer Llama and its tokenizer; same weights for the same seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from generation.models import fixed_seed

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id)
    with fixed_seed(seed):
        return LlamaForCausalLM(config).eval(), tokenizer


class DescriptionLLM:
    """An instruct causal LM that answers prompts by greedy decoding (deterministic)."""

    def __init__(self, model_id: str = DEFAULT_LLM, device: str | None = None,
                 max_new_tokens: int = 80, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model_id
        if model_id == TINY_LLM:
            self.model, self.tokenizer = tiny_llm()
        else:  # a hub id or a local folder; HF_HUB_OFFLINE=1 makes a missing one fail fast
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
            self.model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype).eval()
        self.device = workers.resolve_device(device)
        self.model.to(self.device)
        self.max_new_tokens = max_new_tokens
        self.tokenizer.padding_side = "left"  # decoder-only batches continue from the right end
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def format(self, prompt: str) -> str:
        """Wrap a request in the model's chat template (plain text when it has none)."""
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=True)
        return f"{SYSTEM_PROMPT}\n{prompt}\n"

    def __call__(self, prompts: Sequence[str]) -> list[str]:
        """Answer a batch of requests; greedy decoding, so the same prompts give the same text."""
        import torch

        batch = self.tokenizer([self.format(p) for p in prompts], return_tensors="pt",
                               padding=True).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                pad_token_id=self.tokenizer.pad_token_id)
        answers = output[:, batch["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(answers, skip_special_tokens=True)


# --------------------------------------------------------------------------- repository

def description_records(e: Elements, pair_id: str, answers: dict[str, str], llm_name: str) -> list[dict]:
    """The abnormal and normal records of one pair, from the LLM answers keyed by kind."""
    records = []
    for kind, prompt_fn in (("abnormal", abnormal_prompt), ("normal", normal_prompt)):
        text = clean_description(answers[kind])
        records.append({
            "id": f"{pair_id}-{kind}",
            "pair_id": pair_id,
            "kind": kind,
            "label": int(kind == "abnormal"),
            "anomaly_class": e.anomaly_class if kind == "abnormal" else "normal",
            "pair_class": e.anomaly_class,
            "viewpoint": e.viewpoint,
            "location": e.location,
            "subject": e.subject,
            "event": e.event if kind == "abnormal" else e.normal_event,
            "prompt": prompt_fn(e),
            "text": text or template_description(e, kind),
            "llm": llm_name,
            "fallback": not text,
        })
    return records


def build_repository(tuples: Sequence[Elements], llm, *, dataset: str = "gvvad",
                     batch_size: int = 8, llm_name: str | None = None) -> list[dict]:
    """Ask `llm` (prompts -> answers) for both descriptions of every tuple; two records per pair."""
    from tqdm.auto import tqdm

    llm_name = llm_name or getattr(llm, "name", type(llm).__name__)
    pair_size = max(1, batch_size // 2)
    records = []
    for start in tqdm(range(0, len(tuples), pair_size), desc="gvvad describe", unit="batch",
                      dynamic_ncols=True):
        chunk = tuples[start:start + pair_size]
        prompts = [fn(e) for e in chunk for fn in (abnormal_prompt, normal_prompt)]
        answers = llm(prompts)
        for offset, e in enumerate(chunk):
            pair_id = f"{dataset}-{e.anomaly_class}-{start + offset:04d}"
            pair = {"abnormal": answers[2 * offset], "normal": answers[2 * offset + 1]}
            records.extend(description_records(e, pair_id, pair, llm_name))
    return records


@dataclasses.dataclass
class DescribeSettings:
    """How the description repository is drawn and written."""

    num_pairs: int = setting(300, "pairs to write (GV-VAD: 300 abnormal + 300 normal)")
    seed: int = setting(0, "seed of the element draw")
    llm: str = setting(DEFAULT_LLM, f"instruct LLM: hub id or local folder, or '{TINY_LLM}' for a random test model")
    device: str | None = setting(None, "torch device; None: cuda if available, else cpu")
    max_new_tokens: int = setting(80, "answer length cap in tokens")
    batch_size: int = setting(8, "prompts per generate() call")
    classes: tuple[str, ...] = setting((), "restrict to these classes (none: all)")


def run_describe(settings: DescribeSettings, *, elements: str, out: str, overwrite: bool = False) -> Path:
    """Build the description repository and write it to `out` (JSON lines); return its path."""
    s = settings
    out = Path(out)
    if out.exists() and not overwrite:
        print(f"gvvad describe: {out} exists, keeping it (pass --overwrite to rebuild)")
        return out
    lists = load_element_lists(elements)
    tuples = sample_elements(lists, s.num_pairs, seed=s.seed, classes=s.classes)
    model = DescriptionLLM(s.llm, device=s.device, max_new_tokens=s.max_new_tokens)
    dataset = re.sub(r"[^A-Za-z0-9]+", "", lists["dataset"]) or "gvvad"
    records = build_repository(tuples, model, dataset=dataset, batch_size=s.batch_size)
    workers.write_jsonl(out, records)
    fallbacks = sum(r["fallback"] for r in records)
    print(f"gvvad describe: {len(records)} descriptions ({s.num_pairs} pairs) -> {out}"
          + (f"; {fallbacks} kept the template sentence" if fallbacks else ""))
    return out


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `gvvad-describe` subcommand."""
    parser = subparsers.add_parser(
        "gvvad-describe", help="GV-VAD: paired abnormal/normal descriptions from four elements",
        description=__doc__.split("\n\n")[0] + " Writes one JSON line per description.")
    parser.add_argument("--elements", default="ucf_crime",
                        help="element lists: a shipped name (ucf_crime) or a JSON file path")
    parser.add_argument("--out", required=True, help="output JSON-lines file (descriptions.jsonl)")
    add_flags(parser, DescribeSettings)
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing output")

    def main(args) -> int:
        run_describe(from_args(DescribeSettings, args), elements=args.elements, out=args.out,
                     overwrite=args.overwrite)
        return 0

    parser.set_defaults(func=main)
    return parser

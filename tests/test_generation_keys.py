"""One description of the model choice (inference/model_choice.py) and one of the sampling settings
(inference/sampling.py): the Hydra schemas of chat, web, serve and eval inherit them, the configs read
back into them, eval's `models` entries and the API's request fields map onto them, and no other place
states one of their keys or defaults again."""
from __future__ import annotations

import ast
import typing
from dataclasses import fields, replace

import pytest
from omegaconf import OmegaConf

from conftest import composer
from llama2ft import CONFIG_DIR, PROJECT_ROOT
from llama2ft.config.app_schemas import ChatConfig, EvalConfig, GenerateConfig, ServeConfig, WebConfig
from llama2ft.inference.model_choice import ModelChoice, ModelSource, ModelSpec
from llama2ft.inference.sampling import Sampling, SamplingKeys

APPS = {"chat": ChatConfig, "web": WebConfig, "serve": ServeConfig, "eval": EvalConfig}
SAMPLING = [f.name for f in fields(SamplingKeys)]
MODEL = [f.name for f in fields(ModelChoice)]
SOURCE = [f.name for f in fields(ModelSource)]
# what eval.yaml deliberately sets otherwise: it answers greedily, seeded when do_sample=true
EVAL_SAMPLING = {"do_sample": False, "seed": 0}


def by_name(cls: type) -> dict:
    return {f.name: f for f in fields(cls)}


@pytest.mark.parametrize("schema", [GenerateConfig, *APPS.values()])
def test_the_app_schemas_inherit_the_keys_not_copies_of_them(schema):
    """A key redeclared in a schema (its own default, its own type) is a second statement of it."""
    mine = by_name(schema)
    for base in (SamplingKeys, ModelChoice):
        for name, f in by_name(base).items():
            assert mine[name] is f, f"{schema.__name__}.{name} restates {base.__name__}.{name}"
    assert by_name(ModelSpec)["model"] is by_name(ModelChoice)["model"]
    assert all(by_name(ModelSpec)[name] is f for name, f in by_name(ModelChoice).items())


def _in_class_fields(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(class, field, line) of every annotated class-level field with a default."""
    return [(node.name, item.target.id, item.lineno) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
            for item in node.body if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            and item.value is not None]


def test_no_other_class_states_a_sampling_or_model_key():
    # seed, name, run, system, ... are also other commands' own keys; these names are the generation keys' alone
    keys = {*SAMPLING, "cpu_linear", "adapter"} - {"seed"}
    allowed = {
        "inference/sampling.py": {"SamplingKeys"},
        "inference/model_choice.py": {"ModelChoice"},
        "serving/api_models.py": {"Common"},  # the request's fields: None (the server's setting), see sampling_of
        "config/train_schema.py": {"SampleEvalConfig"},  # training's own sample answers, with their own defaults
        "training/methods/grpo.py": {"GrpoSettings"},  # the answers GRPO samples to learn from: temperature 1 by default
    }
    found = []
    for path in sorted((PROJECT_ROOT / "llama2ft").rglob("*.py")):
        rel = str(path.relative_to(PROJECT_ROOT / "llama2ft"))
        for cls, name, line in _in_class_fields(ast.parse(path.read_text(encoding="utf-8"))):
            if name in keys and cls not in allowed.get(rel, ()):
                found.append(f"{rel}:{line} {cls}.{name}")
    assert found == []


@pytest.mark.parametrize("app", sorted(APPS))
def test_the_generation_configs_restate_no_default(app):
    """configs/<app>.yaml and configs/generate/default.yaml set a model or sampling key only to change it."""
    defaults = {**{f.name: f.default for f in fields(SamplingKeys)},
                **{f.name: f.default for f in fields(ModelChoice) if f.name != "model"}}
    for path in (CONFIG_DIR / f"{app}.yaml", CONFIG_DIR / "generate" / "default.yaml"):
        node = OmegaConf.to_container(OmegaConf.load(path))
        restated = {k: v for k, v in (node or {}).items() if k in defaults and v == defaults[k]}
        assert restated == {}, f"{path.name} restates the default of {sorted(restated)}"


@pytest.mark.parametrize("app", sorted(APPS))
def test_every_key_of_a_config_reaches_the_spec_and_the_sampling(app, tmp_path):
    values = {"temperature": 0.7, "top_p": 0.5, "top_k": 7, "repetition_penalty": 1.1, "frequency_penalty": 0.5,
              "presence_penalty": -0.5, "max_new_tokens": 9, "do_sample": False, "seed": 3}
    source = {"name_or_path": "/m/base", "tokenizer": "/m/tok", "revision": "r1", "trust_remote_code": True,
              "dtype": "float16"}
    model = {"run": None, "adapter": "/m/adapter", "system": "sys", "device": "cpu", "cpu_linear": "torch"}
    assert sorted(values) == sorted(SAMPLING) and sorted(source) == sorted(SOURCE)
    assert sorted([*model, "model"]) == sorted(MODEL)
    overrides = [f"{k}={v}" for k, v in {**values, **model}.items() if v is not None]
    overrides += [f"model.{k}={v}" for k, v in source.items()]
    with composer(app, str(tmp_path)) as make:
        plain, cfg = make([]), make(overrides)
    assert Sampling.of(cfg) == Sampling(**values)
    expected_default = Sampling(**EVAL_SAMPLING) if app == "eval" else Sampling()
    assert Sampling.of(plain) == expected_default
    assert ModelSpec.from_config(cfg) == ModelSpec(model=ModelSource(**source), **model)
    assert ModelSpec.from_config(plain) == ModelSpec()


def test_the_template_and_quant_groups_give_the_spec_their_name_and_mode(tmp_path):
    with composer("chat", str(tmp_path)) as make:
        spec = ModelSpec.from_config(make(["template=llama2_inst", "quant=nf4"]))
        own = ModelSpec.from_config(make(["template=llama2_inst", "system=mine"]))
    assert (spec.template, spec.quant) == ("llama2_inst", "nf4")
    assert spec.system and spec.system.startswith("You are a helpful assistant")  # the group's system prompt
    assert own.system == "mine"


def test_eval_entries_map_onto_the_spec():
    from llama2ft.evaluation.runner import ENTRY_KEYS, entry_spec

    assert set(ENTRY_KEYS) - {"path"} <= set(by_name(ModelSpec))  # ModelSpec's own names, `path` aside
    base = ModelSpec(template="llama2_inst", system="base", device="cpu", model=ModelSource(dtype="float16"))
    entry = {"name": "n", "path": "/m/p", "adapter": "/m/a", "template": "human_assistant", "system": "s"}
    assert set(entry) | {"run"} == set(ENTRY_KEYS)
    spec = entry_spec(entry, base)
    assert spec == replace(base, name="n", model=ModelSource(name_or_path="/m/p", dtype="float16"), adapter="/m/a",
                           template="human_assistant", system="s")
    run = entry_spec({"run": "/r/run"}, base)
    assert (run.run, run.model.name_or_path, run.name, run.template, run.system) == ("/r/run", None, "run",
                                                                                      "llama2_inst", "base")


# ---------------------------------------------------------------- the API's request fields
REQUEST_NAMES = {"max_new_tokens": ("max_tokens", "max_completion_tokens")}  # OpenAI's names for ours
# stop: Sampling's own field beyond the keys; stream_options and user: accepted, they change no setting
NOT_SAMPLING = {"model", "n", "stream", "stop", "stream_options", "user"}
SERVER_ONLY = {"do_sample"}  # a request cannot turn sampling off; temperature=0 is its greedy


def test_every_sampling_key_is_a_request_field_of_its_type():
    from llama2ft.serving.api_models import Common

    hints = typing.get_type_hints(SamplingKeys)
    request = Common.model_fields
    request_types = typing.get_type_hints(Common)  # without the schema's annotations (Annotated extras)
    mapped = set()
    for key in set(SAMPLING) - SERVER_ONLY:
        for name in REQUEST_NAMES.get(key, (key,)):
            assert name in request, f"the API request has no field for {key}"
            inner = hints[key].__args__[0] if typing.get_origin(hints[key]) is typing.Union else hints[key]
            assert request_types[name] == typing.Optional[inner], name
            assert request[name].default is None, name  # None: the server's setting
            mapped.add(name)
    assert set(request) - mapped - NOT_SAMPLING == set(), "a request field that maps onto no sampling setting"


@pytest.mark.parametrize("key", sorted(set(SAMPLING) - SERVER_ONLY))
def test_each_request_field_sets_its_sampling_setting_and_nothing_else(key):
    from llama2ft.serving.api_models import ChatRequest, sampling_of

    server = Sampling(do_sample=False, seed=1)
    changed = {"temperature": 0.9, "top_p": 0.5, "top_k": 3, "repetition_penalty": 1.05, "frequency_penalty": 0.3,
               "presence_penalty": 0.4, "max_new_tokens": 7, "seed": 11}[key]
    for name in REQUEST_NAMES.get(key, (key,)):
        req = ChatRequest(messages=[{"role": "user", "content": "hi"}], **{name: changed})
        assert sampling_of(req, server) == replace(server, **{key: changed}), name
    assert sampling_of(ChatRequest(messages=[]), server) == server

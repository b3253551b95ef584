"""The training template as a published model carries it (data/chat_formats.py), on the embedded and the
real Llama-2 tokenizer: transformers' `apply_chat_template` with it gives exactly the ids llama2ft-chat
feeds (generation prompt) and the training ids (with the last answer), multi-turn, with the run's system
prompt, with another one and with none; a tokenizer's own chat_template is kept (template=chat_template)
and a different one is kept by name when the training template replaces it (reported); the Ollama
TEMPLATE renders the same prompt in Go's text/template (where `go` is installed; required in CI:
LLAMA2FT_REQUIRE_GO=1)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from llama2ft.data.chat_formats import ORIGINAL, jinja_template, ollama_template, publish_template
from llama2ft.data.dialogue import Turn
from llama2ft.data.templates import encode_dialogue, encode_prompt, get_template
from llama2ft.inference.engine import ChatModel
from test_templates import LLAMA2_CHAT_TEMPLATE

RUN_SYSTEM = "你是一个乐于助人的助手。请用中文回答。"
CONVERSATIONS = [
    [Turn("human", "数字 680 的中文读法是什么？")],
    [Turn("human", "1 加 1 等于几？"), Turn("assistant", "二"), Turn("human", "  再加 3 呢？ ")],
    [Turn("human", "Say hello"), Turn("assistant", "Hello, 你好！"), Turn("human", "And in French?"),
     Turn("assistant", "Bonjour")],
    [Turn("human", "写一首两行诗"), Turn("assistant", "床前明月光，\n疑是地上霜。"), Turn("human", "It's \"quoted\" \\ {{ x }}")],
]
# a system message: none (the run's own applies), another one, an empty one (no system prompt)
SYSTEMS = [None, "Answer in one 'word'.\n只用一个词。", ""]


def messages(turns: list[Turn], system: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user" if t.role == "human" else "assistant", "content": t.text} for t in turns]


def chat_ids(template, tok, turns: list[Turn], system: str | None) -> list[int]:
    """What llama2ft-chat feeds the model (the generation core: `/system TEXT`, an empty one, or none)."""
    fed, dropped, _ = ChatModel(None, tok, template, 10**9, "check").prompt_ids(turns, 1, system)
    assert dropped == 0
    return fed


def assert_renders_like_training(tok, template, chat_template: str, systems=tuple(SYSTEMS)) -> None:
    for turns in CONVERSATIONS:
        for system in systems:
            msgs = messages(turns, system)
            if turns[-1].role == "human":
                got = tok.apply_chat_template(msgs, chat_template=chat_template, add_generation_prompt=True)
                assert got["input_ids"] == chat_ids(template, tok, turns, system), (turns, system)
            else:
                got = tok.apply_chat_template(msgs, chat_template=chat_template)
                trained = template if system is None else get_template(template.name, system or None)
                assert got["input_ids"] == encode_dialogue(trained, tok, turns).input_ids, (turns, system)


@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
@pytest.mark.parametrize("run_system", [None, RUN_SYSTEM])
def test_jinja_gives_chat_and_training_ids(any_tokenizer, name, run_system):
    template = get_template(name, run_system)
    assert_renders_like_training(any_tokenizer, template, jinja_template(template))


def test_llama2_inst_jinja_renders_as_llama2_chats_own(real_tokenizer):
    """Without a default system prompt, the generated llama2_inst template is Meta's Llama-2-chat one."""
    ours = jinja_template(get_template("llama2_inst"))
    for turns in CONVERSATIONS:
        for system in ("请用中文回答。", None):
            msgs = messages(turns, system)
            assert real_tokenizer.apply_chat_template(msgs, chat_template=ours, tokenize=False) == \
                real_tokenizer.apply_chat_template(msgs, chat_template=LLAMA2_CHAT_TEMPLATE, tokenize=False)


def test_roles_out_of_order_are_refused(tokenizer):
    jinja = jinja_template(get_template("human_assistant"))
    with pytest.raises(Exception, match="alternate"):
        tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
                                      chat_template=jinja)


@pytest.fixture
def own_template_tokenizer(any_tokenizer):
    """A copy of the tokenizer with a chat_template of its own (Llama-2-chat's)."""
    import copy

    tok = copy.deepcopy(any_tokenizer)
    tok.chat_template = LLAMA2_CHAT_TEMPLATE
    return tok


@pytest.mark.parametrize("run_system", [None, RUN_SYSTEM])
def test_a_tokenizers_own_template_is_kept_for_template_chat_template(own_template_tokenizer, run_system):
    tok, template = own_template_tokenizer, get_template("chat_template", run_system)
    assert publish_template(tok, template) == []
    if run_system is None:
        assert tok.chat_template == LLAMA2_CHAT_TEMPLATE  # kept as written
        # as written, it renders an empty system message as an empty <<SYS>> block: its own convention
        assert_renders_like_training(tok, template, tok.chat_template, systems=(None, SYSTEMS[1]))
    else:
        assert tok.chat_template.endswith(LLAMA2_CHAT_TEMPLATE)  # the run's system prompt as a default, in front
        assert_renders_like_training(tok, template, tok.chat_template)
    # training again from such a tokenizer: the system default is replaced, not stacked
    again = get_template("chat_template", "另一个系统提示。")
    publish_template(tok, again)
    assert tok.chat_template.count("{#- llama2ft system:") == 1
    assert_renders_like_training(tok, again, tok.chat_template)


def test_a_different_own_template_is_kept_by_name_and_reported(own_template_tokenizer):
    tok = own_template_tokenizer
    template = get_template("human_assistant")
    notes = publish_template(tok, template)
    assert len(notes) == 1 and "renders conversations differently" in notes[0] and repr(ORIGINAL) in notes[0]
    assert tok.chat_template == {"default": jinja_template(template), ORIGINAL: LLAMA2_CHAT_TEMPLATE}
    assert_renders_like_training(tok, template, tok.chat_template["default"])
    # the same template again (a run trained from this model): nothing to report, nothing renamed
    assert publish_template(tok, template) == [] and set(tok.chat_template) == {"default", ORIGINAL}


def test_an_own_template_that_renders_alike_is_kept_as_is(own_template_tokenizer):
    """llama2_inst without a system prompt is Llama-2-chat's own template: no clash, theirs stays."""
    tok = own_template_tokenizer
    assert publish_template(tok, get_template("llama2_inst")) == []
    assert tok.chat_template == LLAMA2_CHAT_TEMPLATE
    # with a default system prompt it renders otherwise: a clash
    assert publish_template(tok, get_template("llama2_inst", RUN_SYSTEM))


GO_RENDER = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct{ Role, Content string }

// As Ollama's template.Execute prepares .System and .Messages: system messages joined into .System,
// consecutive messages of one role merged; every message stays in .Messages.
func main() {
	var in struct {
		Template string
		Messages []Message
	}
	json.NewDecoder(os.Stdin).Decode(&in)
	var system []string
	var msgs []*Message
	for i := range in.Messages {
		m := in.Messages[i]
		if m.Role == "system" {
			system = append(system, m.Content)
		}
		if len(msgs) > 0 && msgs[len(msgs)-1].Role == m.Role {
			msgs[len(msgs)-1].Content += "\n\n" + m.Content
		} else {
			msgs = append(msgs, &m)
		}
	}
	t := template.Must(template.New("").Parse(in.Template))
	t.Execute(os.Stdout, map[string]any{"System": strings.Join(system, "\n\n"), "Messages": msgs})
}
"""


@pytest.mark.skipif(shutil.which("go") is None and not os.environ.get("LLAMA2FT_REQUIRE_GO"),
                    reason="Go is not installed (Ollama's templates are Go's; .ci/run installs it, requires the test)")
@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
def test_ollama_template_renders_the_chat_prompt(tmp_path, tokenizer, name):
    """The Modelfile's TEMPLATE in Go's text/template: BOS (which Ollama adds itself) and the prompt
    text llama2ft-chat renders. Ollama puts the Modelfile's SYSTEM in as a first system message."""
    assert shutil.which("go"), "LLAMA2FT_REQUIRE_GO is set but `go` is not installed"
    (tmp_path / "render.go").write_text(GO_RENDER)
    template = get_template(name, RUN_SYSTEM)
    text = ollama_template(template, tokenizer.bos_token, tokenizer.eos_token)
    for turns in CONVERSATIONS[:2] + CONVERSATIONS[3:]:
        if any(t.text != t.text.strip() for t in turns) and name == "llama2_inst":
            continue  # Go templates have no trim: a padded message goes in as typed
        for system in (RUN_SYSTEM, "只用一个词。"):
            doc = {"Template": text, "Messages": messages(turns, system)}
            doc["Messages"] = [{"Role": m["role"], "Content": m["content"]} for m in doc["Messages"]]
            res = subprocess.run(["go", "run", str(tmp_path / "render.go")], input=json.dumps(doc), text=True,
                                 capture_output=True, cwd=tmp_path, timeout=120)
            assert res.returncode == 0, res.stderr
            expected = get_template(name, system).prompt(turns, tokenizer)
            assert tokenizer.bos_token + res.stdout == expected, (turns, system)


def test_a_runs_adapter_and_tokenizer_folders_carry_the_template(smoke_run):
    """llama2ft-train saves the training template as the chat_template of adapter/ and tokenizer/."""
    from transformers import AutoTokenizer

    from llama2ft.model.run_folder import read_run

    run = read_run(smoke_run.path)
    template = get_template(run.template, run.system)
    for folder in (run.adapter, run.tokenizer):
        tok = AutoTokenizer.from_pretrained(str(folder))
        assert tok.chat_template == jinja_template(template)
        for turns in CONVERSATIONS:
            if turns[-1].role == "human":
                got = tok.apply_chat_template(messages(turns, None), add_generation_prompt=True)["input_ids"]
                assert got == encode_prompt(template, tok, turns)


@pytest.mark.parametrize("name", ["human_assistant", "llama2_inst"])
@pytest.mark.parametrize("system", [None, RUN_SYSTEM, "It's 'quoted' \\ {{ x }}\n\t多行"])
def test_a_published_template_tells_its_name_and_system_prompt(name, system):
    """What a folder's chat_template says it was trained with (eval and chat read it when llama2ft.json is
    missing); a tokenizer's own template is none of ours."""
    from llama2ft.data.chat_formats import template_of

    published = jinja_template(get_template(name, system))
    kept = system if name == "llama2_inst" else None  # human_assistant has no system prompt
    assert template_of(published) == template_of({"default": published, ORIGINAL: "x"}) == (name, kept)
    assert template_of(LLAMA2_CHAT_TEMPLATE) is None and template_of(None) is None

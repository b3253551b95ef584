"""parse_dialogue / format_dialogue / parse_rows on the community `<s>Human: ...</s>` format."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from llama2ft.data.csv_reader import read_column
from llama2ft.data.dialogue import (
    ASSISTANT,
    HUMAN,
    DialogueFormatError,
    Turn,
    format_dialogue,
    parse_dialogue,
    parse_rows,
)
from llama2ft.core.errors import DataError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def H(text: str) -> Turn:
    return Turn(HUMAN, text)


def A(text: str) -> Turn:
    return Turn(ASSISTANT, text)


SINGLE = "<s>Human: 用一句话描述地球。\n</s><s>Assistant: 地球是唯一已知有生命的行星。\n</s>"
MULTI = (
    "<s>Human: Hi\n</s><s>Assistant: Hello!\n</s>"
    "<s>Human: Write code\n</s><s>Assistant: ```python\nif a < b and b<c:\n    print(\"<ok>\")\n```\n</s>"
)


def test_single_turn():
    assert parse_dialogue(SINGLE) == [H("用一句话描述地球。"), A("地球是唯一已知有生命的行星。")]


def test_multi_turn_with_code_and_angle_brackets():
    assert parse_dialogue(MULTI) == [
        H("Hi"),
        A("Hello!"),
        H("Write code"),
        A('```python\nif a < b and b<c:\n    print("<ok>")\n```'),
    ]


@pytest.mark.parametrize(
    "text",
    [
        SINGLE,
        MULTI,
        "<s>Human: \n</s><s>Assistant:  two leading spaces kept \n\n</s>",
        "<s>Human: 😀 </svg></script> <s \"q\" ''\n</s><s>Assistant: a\n</s><s>Human: unanswered\n</s>",
    ],
)
def test_format_is_the_inverse_of_parse_for_canonical_text(text):
    assert format_dialogue(parse_dialogue(text)) == text


def test_no_newline_before_close_no_space_after_colon_and_crlf():
    assert parse_dialogue("<s>Human:Q</s><s>Assistant: A\r\n</s>") == [H("Q"), A("A")]


def test_only_one_space_and_one_newline_are_stripped():
    assert parse_dialogue("<s>Human:  Q \n\n</s><s>Assistant:\tA</s>") == [H(" Q \n"), A("\tA")]


def test_whitespace_between_and_around_blocks():
    text = "\n  <s>Human: Q\n</s>\n\n<s>Assistant: A\n</s> \r\n"
    assert parse_dialogue(text) == [H("Q"), A("A")]


def test_roles_are_case_insensitive_and_normalised():
    turns = parse_dialogue("<s>human: Q\n</s><s>ASSISTANT: A\n</s>")
    assert turns == [H("Q"), A("A")]
    assert format_dialogue(turns) == "<s>Human: Q\n</s><s>Assistant: A\n</s>"


def test_consecutive_human_turns_are_kept_separate():
    text = "<s>Human: Thanks\n</s><s>Human: Will do\n</s><s>Assistant: Great!\n</s>"
    assert parse_dialogue(text) == [H("Thanks"), H("Will do"), A("Great!")]


def test_trailing_human_turn_is_kept():
    text = "<s>Human: Q\n</s><s>Assistant: A\n</s><s>Human: and then?\n</s>"
    assert parse_dialogue(text)[-1] == H("and then?")


def test_empty_human_turn_is_allowed():  # occurs in the real ShareGPT data
    assert parse_dialogue("<s>Human: \n</s><s>Assistant: A\n</s>") == [H(""), A("A")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty dialogue"),
        (" \n\t ", "empty dialogue"),
        ("Human: hi\nAssistant: hello", "no <s>...</s> blocks found (the text starts with 'Human: hi"),
        ("Q: <s>Human: Q</s><s>Assistant: A</s>", "unexpected text before the first <s>: 'Q: <s>Human"),
        ("<s>Human: Q</s> oops <s>Assistant: A</s>", "unexpected text after turn 1 (character 16): 'oops"),
        ("<s>Human: Q</s><s>Assistant: A</s></s>", "unexpected text after turn 2 (character 34): '</s>'"),
        ("<s>Human: Q</s><s>Assistant: A", "turn 2 (character 15) has no closing </s>"),
        ("<s>Human: Q<s>Assistant: A</s>", "turn 1 (character 0) has another <s> inside it (character 11)"),
        ("<s>User: Q</s><s>Assistant: A</s>", "turn 1 has unknown role 'User'; expected 'Human' or 'Assistant'"),
        ("<s>Human: Q</s><s>Assistant : A</s>", "turn 2 has unknown role 'Assistant '"),
        ("<s>just some text</s>", "turn 1 starts with 'just some text'; expected 'Human:' or 'Assistant:'"),
        ("<s>Assistant: A</s><s>Human: Q</s>", "dialogue starts with an Assistant turn; the first turn must be Human"),
        ("<s>Human: Q</s><s>Human: Q2</s>", "dialogue has no Assistant turn"),
        ("<s>Human: Q</s><s>Assistant: \n</s>", "turn 2 is an Assistant turn with empty content"),
    ],
)
def test_errors(text, expected):
    with pytest.raises(DialogueFormatError) as info:
        parse_dialogue(text)
    assert expected in str(info.value)


def test_long_pathological_cells_are_linear():
    start = time.perf_counter()
    long_ok = "<s>Human: " + "<" * 300_000 + "\n</s><s>Assistant: " + "s>" * 150_000 + "\n</s>"
    assert len(parse_dialogue(long_ok)) == 2
    for bad in ["<s>" * 100_000, "<s>Human: " + "x" * 300_000, "<s>Human: a</s>" + " " * 300_000 + "x"]:
        with pytest.raises(DialogueFormatError):
            parse_dialogue(bad)
    assert time.perf_counter() - start < 2


def test_turn_and_format_validation():
    with pytest.raises(ValueError):
        Turn("user", "x")
    with pytest.raises(ValueError):
        format_dialogue([H("a </s> b"), A("c")])


def test_parse_rows_raises_with_path_and_row():
    rows = [(1, SINGLE), (2, ""), (3, "<s>User: x</s>")]
    with pytest.raises(DataError) as info:
        parse_rows(rows, "data/train.csv", skip_bad_rows=False)
    assert str(info.value) == "data/train.csv row 2: empty dialogue (the cell is empty or only whitespace)"


def test_parse_rows_skips_and_reports_bad_rows():
    rows = [(1, SINGLE), (2, ""), (3, "<s>User: x</s>"), (4, MULTI)]
    dialogues, skipped = parse_rows(rows, "data/train.csv", skip_bad_rows=True)
    assert [n for n, _ in dialogues] == [1, 4]
    assert dialogues[1][1] == parse_dialogue(MULTI)
    assert [n for n, _ in skipped] == [2, 3]
    assert "unknown role 'User'" in skipped[1][1]


def test_read_column_then_parse_rows_names_file_and_row(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text\n"' + SINGLE + '"\n"<s>Assistant: A</s>"\n', encoding="utf-8")
    with pytest.raises(DataError) as info:
        parse_rows(read_column(path), str(path), skip_bad_rows=False)
    assert str(info.value).startswith(f"{path} row 2: dialogue starts with an Assistant turn")


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_every_real_row_parses_and_round_trips(name):
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real sample data not available at {path}")
    rows = read_column(path)
    dialogues, skipped = parse_rows(rows, str(path), skip_bad_rows=False)
    assert skipped == [] and len(dialogues) == len(rows) == 200
    for (n, cell), (_, turns) in zip(rows, dialogues):
        assert format_dialogue(turns) == cell, f"row {n} does not round-trip"
    if name == "dev_sft_sharegpt.csv":
        assert any(turns[-1].role == HUMAN for _, turns in dialogues)  # unanswered last question
        assert any(a.role == b.role == HUMAN for _, turns in dialogues for a, b in zip(turns, turns[1:]))


FAST_PATH_CASES = [SINGLE, MULTI, "<s>Human: \n</s><s>Assistant: 答\n</s>", "<s>Human: a\r\n</s><s>Assistant: b\r\n</s>",
                   "<s>Human:  两个空格\n</s><s>Assistant:   三个空格 \n</s>", "<s>human: a\n</s><s>assistant: b\n</s>",
                   "<s>Human: a\n</s>\n<s>Assistant: b\n</s>", "<s>Human: a\n</s><s>Assistant: \n</s>",
                   "<s>Assistant: b\n</s><s>Human: a\n</s>", "<s>Human: a\n</s><s>Human: b\n</s><s>Assistant: c\n</s>",
                   "<s>Human: a\n</s><s>Assistant: b\n</s><s>Human: 没回答\n</s>", "<s>Human: a<s>\n</s>"]


@pytest.mark.parametrize("text", FAST_PATH_CASES)
def test_the_canonical_fast_path_agrees_with_the_full_parser(text):
    from llama2ft.data.dialogue import DialogueFormatError, _parse_canonical, _parse_full

    fast = _parse_canonical(text)
    try:
        full = _parse_full(text)
    except DialogueFormatError:
        full = None
    assert fast is None or fast == full


@pytest.mark.parametrize("name", ["dev_sft.csv", "dev_sft_sharegpt.csv"])
def test_real_rows_take_the_fast_path_with_the_same_turns(name):
    from llama2ft.data.dialogue import _parse_canonical, _parse_full

    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"real sample data not available at {path}")
    for n, cell in read_column(path):
        assert _parse_canonical(cell) == _parse_full(cell), f"row {n}"


def test_the_canonical_regex_agrees_with_the_block_check():
    """is_canonical (the data step's check) decides exactly as canonical_blocks, on the cases above,
    on every real row and on random mixtures of the format's pieces."""
    import random

    from llama2ft.data.dialogue import canonical_blocks, is_canonical

    shown = list(FAST_PATH_CASES)
    for name in ("dev_sft.csv", "dev_sft_sharegpt.csv"):
        if (SHARED_DATA / name).is_file():
            shown += [cell for _, cell in read_column(SHARED_DATA / name)]
    cells: list[str] = []
    parts = ["<s>", "</s>", "Human: ", "Assistant: ", "Human:", "\n", "\r\n", " ", "a", "你", "<", "s>", "</", "\t"]
    rng = random.Random(0)
    for _ in range(20000):
        cells.append("".join(rng.choice(parts) for _ in range(rng.randint(1, 14))))
        turns = [rng.choice(["<s>Human: ", "<s>Assistant: "]) + rng.choice(["", " ", "x", "<a>", "\r"]) +
                 rng.choice(["\n</s>", "\r\n</s>", "</s>"]) for _ in range(rng.randint(1, 4))]
        cells.append("".join(turns))
    assert sum(is_canonical(c) for c in cells) > 50  # enough canonical cells among the random ones
    for cell in shown + cells:
        assert is_canonical(cell) == (canonical_blocks(cell) is not None), repr(cell)

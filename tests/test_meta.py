"""Page metadata: the pages.toml sidecar, masthead dates, how a citation names its page, filters."""
from __future__ import annotations

import json
import shutil

import pytest

from rag.errors import BadInput
from rag.meta import Filters, PageMeta, describe_source, find_masthead_date, name_local_city, read_sidecar, source_label

from .conftest import DATA, SEEDS, run_cli

META = DATA / "meta"


def test_the_seed_sidecar_says_only_what_the_pages_say():
    sidecar = read_sidecar(SEEDS)
    assert set(sidecar) == {p.name for p in SEEDS.glob("*.txt")}
    # none of the five pages prints its paper's name, a masthead date or a page number
    assert all(m.paper is None and m.date is None and m.page is None for m in sidecar.values())
    assert sidecar["001_c451c93762dc6e8f.txt"].region == "鄂尔多斯"
    assert sidecar["004_03d7d0636abde70e.txt"].city == "格尔木"  # 我市 … 《格尔木市工业科技领域人才…》


@pytest.mark.parametrize("text, date", [
    ("2023 年 12 月 19 日 星期二\n\n本报讯 …。", "2023-12-19"),
    ("\n\n2024年1月5日\n标题\n正文。", "2024-01-05"),
    ("2023年12月19日  农历冬月初七\n正文。", "2023-12-19"),
    ("2023 年 12 月 19 日至 27 日，分别对全市56家单位开展考核。", None),  # a date in a sentence
    ("正文。\n" * 20 + "2023年12月19日\n", None),  # not at the top of the page
    ("2023年2月30日\n正文。", None),  # no such day
])
def test_masthead_dates(text, date):
    assert find_masthead_date(text) == date


@pytest.mark.parametrize("toml, words", [
    ('["a.txt"]\npapr = "x"\n', "unknown key(s) papr"),
    ('["a.txt"]\ndate = "2023/12/19"\n', "YYYY-MM-DD"),
    ('["a.txt"]\ndate = "2023-02-30"\n', "not a calendar date"),
    ('["a.txt"]\npage = 2\n', "page must be text"),
    ('["a.txt"\n', "not valid TOML"),
])
def test_a_bad_sidecar_is_one_clear_message(tmp_path, toml, words):
    (tmp_path / "pages.toml").write_text(toml, encoding="utf-8")
    with pytest.raises(BadInput, match=words.replace("(", r"\(").replace(")", r"\)")):
        read_sidecar(tmp_path)
    (tmp_path / "a.txt").write_text("本报讯 今天下雨了，大家出门带伞。\n", encoding="utf-8")
    out = run_cli("articles", "--json", "--seeds", str(tmp_path))
    assert out.returncode == 1 and "pages.toml" in out.stderr and "Traceback" not in out.stderr


def test_citation_labels_and_the_city_of_wo_shi():
    assert source_label("格尔木日报", "2023-12-19", "2") == "《格尔木日报》2023-12-19 第2版"
    assert source_label(None, None, None) == ""
    hit = {"paper": None, "date": None, "page": None, "region": "格尔木", "source": "004.txt"}
    assert describe_source(hit, 17) == "格尔木 · 004.txt 第17行"
    assert name_local_city("近年来，我市持续加大…全市", "格尔木") == "近年来，我市（格尔木）持续加大…全市（格尔木）"
    assert name_local_city("近年来，我市持续加大", None) == "近年来，我市持续加大"


def test_filters_check_their_values_and_admit_exactly():
    inside = PageMeta(paper="德令哈日报", date="2024-01-05", region="德令哈", city="德令哈")
    assert Filters(region="德令哈", since="2024-01-01", until="2024-01-31").admits(inside)
    assert not Filters(until="2024-01-04").admits(inside)
    assert not Filters(since="2024-01-01").admits(PageMeta(region="德令哈"))  # undated: outside any range
    assert not Filters(paper="格尔木日报").admits(inside)
    assert Filters.from_dict({"paper": "《德令哈日报》"}).admits(inside)
    with pytest.raises(BadInput, match="after until"):
        Filters(since="2024-02-01", until="2024-01-01")
    with pytest.raises(BadInput, match="unknown filter"):
        Filters.from_dict({"city": "x"})
    with pytest.raises(BadInput, match="YYYY-MM-DD"):
        Filters.from_dict({"since": "昨天"})


def test_pages_take_their_metadata_from_the_sidecar_and_the_masthead(tmp_path):
    shutil.copytree(META, tmp_path / "seeds")
    out = run_cli("articles", "--json", "--seeds", str(tmp_path / "seeds"))
    assert out.returncode == 0, out.stderr
    arts = [json.loads(line) for line in out.stdout.splitlines()]
    assert arts and all(a["paper"] == "德令哈日报" and a["page"] == "3" and a["region"] == "德令哈" for a in arts)
    assert all(a["date"] == "2024-01-05" for a in arts)  # printed on the page, not in the sidecar
    assert "pages.toml" not in out.stderr  # the sidecar is not a page, nor a skipped file


def test_cli_citations_name_the_page_and_filters_are_exact(index_dir):
    out = run_cli("ask", "格尔木的开发区在全国排第几？", "--index", str(index_dir))
    assert out.returncode == 0, out.stderr
    assert "格尔木 · 000_083e7fa3461b093d.txt 第" in out.stdout
    out = run_cli("search", "人才", "--k", "10", "--json", "--region", "海西", "--index", str(index_dir))
    hits = json.loads(out.stdout)["hits"]
    assert hits and {(h["region"], h["source"]) for h in hits} == {("海西州", "003_a3fa46dbc4287a89.txt")}
    assert {"paper", "date", "page", "region"} <= set(hits[0])
    out = run_cli("ask", "格尔木的开发区在全国排第几？", "--json", "--region", "鄂尔多斯", "--index", str(index_dir))
    ans = json.loads(out.stdout)
    assert "128" not in ans["answer"] and all(c["region"] == "鄂尔多斯" for c in ans["citations"] + ans["related"])


@pytest.mark.parametrize("args, code, words", [
    (["--since", "2023-01-01"], 1, "没有符合筛选条件（日期 2023-01-01 至 …）的文章"),
    (["--paper", "海西日报"], 1, "报纸：版面未注明"),
    (["--since", "2023/01/01"], 2, "YYYY-MM-DD"),
    (["--since", "2024-02-01", "--until", "2024-01-01"], 1, "after until"),
])
def test_cli_filters_say_what_is_wrong(index_dir, args, code, words):
    out = run_cli("ask", "格尔木的开发区在全国排第几？", *args, "--index", str(index_dir))
    assert out.returncode == code and words in out.stderr and "Traceback" not in out.stderr

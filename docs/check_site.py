"""Check the built site (build/site/) in a real browser: `python docs/check_site.py` (after `python docs/build.py`).

Needs Debian's `chromium` (`apt-get install chromium`; .ci/run installs it). Serves the site over HTTP on
localhost, then:
- every internal link and resource (href/src of a, img, link, script) of every page points at a file of the site,
  and every `#fragment` of a link to a page exists in that page;
- the user guide's pages (`readme.GUIDE`, `docs/guide_*.md`) exist, are in the navigation of every page, and are
  linked from the home page;
- headless Chromium opens every page; a script added to the served copy records, after the page's `load` event,
  how many images it holds and which did not load (`complete` with a natural width of 0): none may fail;
- the pages in SHOTS must hold figures (at least one image of an executed cell), and get a screenshot scrolled to
  their first figure: build/screenshots/<page>.png (CI artifacts);
- the library pages in PRINTS were executed and one of their cell outputs holds the given text (a recipe table,
  a `--help`);
- the pages in DATA_PAGES (the EDA and the analysis) must say which data they ran on ("This page ran on: real
  competition images" or "...: the synthetic twin"), and it must be the data `build.py` gave them
  (build/executed.json).
Exits 1 with the list of problems, prints a summary otherwise.
"""
import functools, html, http.server, json, os, re, shutil, socketserver, subprocess, sys, tempfile, threading, time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit, unquote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from readme import GUIDE
SITE, SHOTS_DIR = ROOT / 'build' / 'site', ROOT / 'build' / 'screenshots'
SHOTS = ('20_eda', '16_analysis', '23_inference_analysis')
DATA_PAGES = ('20_eda', '23_inference_analysis')
RAN_ON = {'real': 'This page ran on: real competition images', 'synthetic': 'This page ran on: the synthetic twin'}
PRINTS = {'08_config': 'quick', '90_cli': 'usage: cellseg predict'}   # library pages: text only their executed output holds


def check_printed(site: Path, executed: dict, prints=PRINTS) -> list:
    "Library pages that were not executed by build.py, or whose page lacks the text of `prints` in a cell output."
    problems = []
    for name, text in prints.items():
        f = site / f'{name}.html'
        if name not in executed: problems.append(f"{name}.html: not executed by build.py (no entry in build/executed.json)")
        elif not f.is_file(): problems.append(f"{name}.html: missing")
        else:
            page = f.read_text()                     # each output: from its opening tag to the next cell's input
            outs = [re.split(r'jp-InputArea|jp-Cell ', page[m.end():m.end() + 200_000], maxsplit=1)[0]
                    for m in re.finditer(r'<div[^>]*class="[^"]*jp-OutputArea-output[^"]*"[^>]*>', page)]
            if not any(text in html.unescape(re.sub('<[^>]+>', '', o)) for o in outs):
                problems.append(f"{name}.html: no cell output shows {text!r} (the examples were not executed?)")
    return problems
PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.src.slice(0, 80); });
  var figs = imgs.filter(function (i) { return i.closest('.jp-OutputArea, .jp-RenderedImage, .output_png') && i.naturalWidth > 50; });
  document.body.setAttribute('data-imgcheck', JSON.stringify({n: imgs.length, figures: figs.length, bad: bad}));
  if (location.search.indexOf('shot') >= 0 && figs.length) {   // screenshot: hide the cells above the first figure's
    var cell = figs[0].closest('.jp-Cell');                       // code cell (but the title), so it shows on screen
    document.querySelectorAll('.jp-Cell').forEach(function (c) {
      if (c !== cell && !c.contains(cell) && !c.querySelector('h1') &&
          (c.compareDocumentPosition(cell) & Node.DOCUMENT_POSITION_FOLLOWING)) c.style.display = 'none';
    });
  }
});
</script>"""


class Links(HTMLParser):
    """Collects the href/src of links and resources, and the ids, of one HTML page; also the hrefs of its navigation
    (links of class `md-nav__link`) and of its content (links inside `<article>`)."""
    def __init__(self):
        super().__init__(); self.urls, self.ids, self.nav, self.content, self._article = [], set(), set(), set(), 0
    def handle_endtag(self, tag):
        if tag == 'article': self._article -= 1
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'article': self._article += 1
        if 'id' in a: self.ids.add(a['id'])
        if tag == 'a' and a.get('href'):
            if 'md-nav__link' in (a.get('class') or '').split(): self.nav.add(a['href'])
            if self._article: self.content.add(a['href'])
        if tag == 'a' and 'name' in a: self.ids.add(a['name'])
        for k in ('href', 'src'):
            if a.get(k) and tag in ('a', 'img', 'link', 'script', 'source'): self.urls.append((tag, a[k]))


def parse(page: Path) -> Links:
    p = Links(); p.feed(page.read_text(errors='replace')); return p


def check_links(site: Path) -> list:
    "Broken internal links and resources of every page, as 'page: url' strings."
    pages = {p: parse(p) for p in site.rglob('*.html')}
    problems = []
    for page, links in pages.items():
        for tag, url in links.urls:
            u = urlsplit(html.unescape(url))
            if u.scheme or u.netloc or url.startswith(('data:', 'mailto:', 'javascript:')): continue
            if not u.path: target = page
            elif u.path.startswith('/'): target = (site / unquote(u.path).lstrip('/')).resolve()   # site-absolute
            else: target = (page.parent / unquote(u.path)).resolve()
            if target.is_dir(): target = target / 'index.html'
            name = f"{page.relative_to(site)}: {url}"
            if site.resolve() not in target.parents and target != site.resolve(): problems.append(f"{name} leaves the site")
            elif not target.exists(): problems.append(f"{name} -> missing {target.relative_to(site.resolve())}")
            elif u.fragment and target.suffix == '.html' and tag == 'a':
                ids = pages[target].ids if target in pages else parse(target).ids
                if unquote(u.fragment) not in ids: problems.append(f"{name} -> no #{u.fragment} in {target.name}")
    return problems


def check_guide(site: Path, guide=GUIDE) -> list:
    "Pages of the user guide `guide` missing from the site, from the navigation of a page, or from the home page's links."
    problems = [f"{g}.html: missing (a page of the user guide)" for g in guide if not (site / f'{g}.html').exists()]
    for page in sorted(site.rglob('*.html')):
        if page.name == '404.html': continue
        links = parse(page)
        rel = lambda g: Path(os.path.relpath(site / f'{g}.html', page.parent)).as_posix()
        missing = [g for g in guide if rel(g) not in links.nav]
        if missing: problems.append(f"{page.relative_to(site)}: not in its navigation: {', '.join(missing)}")
        if page == site / 'index.html':
            unlinked = [g for g in guide if not any(urlsplit(u).path == rel(g) for u in links.content)]
            if unlinked: problems.append(f"index.html: the home page does not link to {', '.join(unlinked)}")
    return problems


def serve(folder: Path):
    "Serve `folder` on a free localhost port in a thread; returns (server, base URL)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    handler = functools.partial(Quiet, directory=str(folder))
    srv = socketserver.ThreadingTCPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}/"


def chromium(*args, timeout=120):
    exe = shutil.which('chromium') or shutil.which('chromium-browser')
    if exe is None: sys.exit("check_site: no chromium found (Debian: apt-get install chromium)")
    cmd = [exe, '--headless=new', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--mute-audio',
           '--no-first-run', '--disable-dev-shm-usage', '--virtual-time-budget=15000', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def check_data_pages(site: Path, executed: dict) -> list:
    "Pages of DATA_PAGES that do not say the data they were executed on (per build/executed.json)."
    problems = []
    for name in DATA_PAGES:
        page = site / f'{name}.html'
        if not page.exists(): problems.append(f"{name}.html: missing"); continue
        text = re.sub(r'<[^>]+>', '', html.unescape(page.read_text(errors='replace')))
        text = re.sub(r'\s+', ' ', text)
        want = RAN_ON.get(executed.get(name, {}).get('data', ''))
        if want is None: problems.append(f"{name}.html: not executed by build.py (no entry in build/executed.json)")
        elif want not in text: problems.append(f"{name}.html: does not say '{want}'")
    return problems


def main():
    if not (SITE / 'index.html').exists(): sys.exit(f"check_site: {SITE} has no index.html: run python docs/build.py")
    t0 = time.time()
    problems = check_links(SITE) + check_guide(SITE)
    ex = ROOT / 'build' / 'executed.json'
    executed = json.loads(ex.read_text()) if ex.exists() else {}
    problems += check_data_pages(SITE, executed) + check_printed(SITE, executed)
    pages = sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob('*.html') if p.name != '404.html')
    with tempfile.TemporaryDirectory() as d:
        copy = Path(d) / 'site'; shutil.copytree(SITE, copy)
        for p in pages:                                        # the probe goes into the served copy only
            f = copy / p; f.write_text(f.read_text().replace('</body>', PROBE + '</body>', 1))
        srv, base = serve(copy)
        try:
            stats = {}
            for p in pages:
                r = chromium('--dump-dom', base + p)
                m = re.search(r'data-imgcheck="([^"]*)"', r.stdout)
                if r.returncode or not m:
                    problems.append(f"{p}: the browser did not finish loading it (rc {r.returncode}) {r.stderr[-300:]}")
                    continue
                s = stats[p] = json.loads(html.unescape(m.group(1)))
                problems += [f"{p}: image did not load: {src}" for src in s['bad']]
            SHOTS_DIR.mkdir(parents=True, exist_ok=True)
            for name in SHOTS:
                p = f'{name}.html'
                if stats.get(p, {}).get('figures', 0) == 0:
                    problems.append(f"{p}: no figure on the page"); continue
                png = SHOTS_DIR / f'{name}.png'
                r = chromium(f'--screenshot={png}', '--window-size=1280,1400', base + p + '?shot=1')
                if r.returncode or not png.exists() or png.stat().st_size < 20_000:
                    problems.append(f"{p}: screenshot failed or is blank ({r.stderr[-300:]})")
        finally:
            srv.shutdown()
    if problems:
        print(f"check_site: {len(problems)} problem(s):\n" + '\n'.join(problems)); sys.exit(1)
    n_img = sum(s['n'] for s in stats.values()); n_fig = sum(s['figures'] for s in stats.values())
    ran = ', '.join(f"{n} on {executed.get(n, {}).get('data')} data" for n in DATA_PAGES)
    print(f"check_site: {len(pages)} pages opened in Chromium ({len(GUIDE)} of them the user guide, in every page's "
          f"navigation), {n_img} images loaded ({n_fig} figures), no broken internal link; {ran}; screenshots: {', '.join(str((SHOTS_DIR / f'{s}.png').relative_to(ROOT)) for s in SHOTS)} "
          f"({time.time() - t0:.0f} s)")


if __name__ == '__main__':
    main()

"""``canary dashboard``: a live web view of the canary, served by aiohttp from the topics it tails.

- :mod:`canary.dashboard.feed` — topic tailing and the folded state (control verified as the routers do)
- :mod:`canary.dashboard.views` — HTML fragments (view data drawn by :mod:`canary.render`'s templates); the
  charts are the report's (``canary.reports.html``)
- :mod:`canary.dashboard.page` — the page shell (``canary/render/templates/dashboard/page.html.j2``)
- :mod:`canary.dashboard.auth` — the operator token
- :mod:`canary.dashboard.app` — routes, server-sent events, signed operator actions, replay form
- ``static/`` — the page's script and style sheet (no CDN: everything is served by the app)
"""

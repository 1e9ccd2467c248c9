"""``siptrace web``: a read-only web view of the trace table, for a team.

``app``     the Starlette application: routes, pages, auth and security headers
``server``  listen address checks and uvicorn, until SIGINT/SIGTERM

Every byte of SIP is attacker-controlled: pages are Jinja2 templates with autoescape
on, and the only markup inserted unescaped is the ladder SVG, which
``siptrace.view.svg.render_svg`` escapes itself. No JavaScript anywhere.
"""

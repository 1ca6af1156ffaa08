"""The report stage: tables, figures and one self-contained HTML page from verify/train outputs.

Modules: `loading` (read verify folders and run folders into `RunData`), `tables` (comparison
table as Markdown/CSV/HTML), `paired` (paired bootstrap against a baseline), `figures`
(matplotlib figures over plain arrays, deterministic files), `html` (the offline page and
report.md), `stage` (`make_report`, the stage entry point).
"""

"""Billing of async tasks (spec §9, docs/tasks.md): a video, an image or a song submitted
now and finished minutes later.

* `settings`: the `tasks:` block of billing's config;
* `terms`: what a task costs (per request, per second, × n and size, × the group), exactly;
* `apis`: OpenAI's videos API and the declared task APIs: where their answers keep a task's
  id, status, progress, failure and usage;
* `engine`: the end of a task (once, by the store's compare-and-set) and the poller;
* `requests`: the request side, called by the plugin's hooks: hold at submit, hand the hold
  to the task, check ownership and pin reads to the task's upstream, rewrite ids.
"""

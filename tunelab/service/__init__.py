"""What the app runs beside itself: runs as processes, the settings it reads, who may reach it.

    jobs.py        the run-level API the app uses: checks, launch, the queue, Stop
    processes.py   the app's child processes: spawn, waiter threads, reap, signals, the standby
    standby.py     a training process started ahead of time (`python -m tunelab.standby` starts it)
    settings.py    every TUNELAB_* setting in one table, and what the page should tell its users
    hosting.py     who may reach the app: localhost by default, a login required for anything wider

No gradio here: app.py and tunelab/ui/ call these. Import the module you need:
`from tunelab.service import jobs`.
"""

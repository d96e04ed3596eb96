"""The launcher's stop-signal wait sees a signal whichever thread the kernel hands it to."""

from __future__ import annotations

import subprocess
import sys
import textwrap

_CHILD = textwrap.dedent(
    """
    import os, signal, threading, time
    from devmesh.stop_signal import wait_for_stop_signal

    def send():
        time.sleep(0.5)  # the main thread is waiting by then
        {send}

    threading.Thread(target=send, daemon=True).start()
    got = wait_for_stop_signal()
    restored = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    print(got.name, "restored" if restored else "not-restored", flush=True)
    """
)


def _run(send: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.format(send=send)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_signal_taken_by_another_thread_still_wakes_the_waiter():
    # What happens when a gRPC C thread, not the main thread, receives Ctrl-C: a sigwait-based
    # wait never returns here (the subprocess times out).
    sent_to_thread = "signal.pthread_kill(threading.get_ident(), signal.SIGINT)"
    assert _run(sent_to_thread) == "SIGINT restored"


def test_process_directed_sigterm_is_returned():
    assert _run("os.kill(os.getpid(), signal.SIGTERM)") == "SIGTERM restored"

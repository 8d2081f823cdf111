#!/usr/bin/env python3
"""smtp_sink.py, slower: each mail transaction waits DRILL_SMTP_DELAY_MS (default 200)
before its MAIL command is answered, as a distant mail server would. The kill9 drill uses
it so that the worker it kills holds notices mid-send (claimed, not yet accepted): a
worker killed during the wait leaves no message behind, only its claim, which must
lapse and be sent again once. A message is stored, and its acceptance time taken, only
when its DATA ends, as in smtp_sink.py.

usage: drill_sink.py PORT MAILDIR
"""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import smtp_sink  # noqa: E402

DELAY = int(os.environ.get("DRILL_SMTP_DELAY_MS", "200")) / 1000


class SlowReader:
    def __init__(self, reader):
        self.reader = reader

    async def readline(self):
        line = await self.reader.readline()
        if line[:4].upper() == b"MAIL":
            await asyncio.sleep(DELAY)
        return line


_session = smtp_sink.session


async def slow_session(reader, writer, maildir):
    await _session(SlowReader(reader), writer, maildir)


# smtp_sink.main looks `session` up when a client connects.
smtp_sink.session = slow_session

if __name__ == "__main__":
    print(f"MAIL answered after {DELAY * 1000:.0f} ms", flush=True)
    asyncio.run(smtp_sink.main())

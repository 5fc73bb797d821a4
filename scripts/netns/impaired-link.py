#!/usr/bin/env python3
"""A point-to-point link with latency and loss, in userspace.

The kernel here is built without netem (CONFIG_NET_SCH_NETEM is not set), so
`tc qdisc add ... netem delay 2ms loss 1%` is not available. This does the
same job one layer down: it opens two TUN devices (IP packets, no headers),
and every packet that leaves one is dropped with probability LOSS or else
delivered to the other DELAY ms later, in order. The harness moves each TUN
device into its own network namespace; the kernels' TCP stacks on both sides
see real delay, real loss and real retransmission.

Control on stdin, one command per line (answers on stdout, one JSON line):
  set DELAY_MS LOSS       new delay (ms) and loss (0..1) for both directions
  blackhole on|off        drop everything (a dead link that closes nothing)
  stats                   packets forwarded, dropped, bytes
End of stdin ends the link (the TUN devices go with it).
"""
import argparse
import collections
import fcntl
import json
import os
import random
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def open_tun(name):
    fd = os.open('/dev/net/tun', os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--a', required=True, help='name of the first TUN device')
    parser.add_argument('--b', required=True, help='name of the second TUN device')
    parser.add_argument('--delay-ms', type=float, default=0.0)
    parser.add_argument('--loss', type=float, default=0.0)
    parser.add_argument('--seed', type=int, default=1)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    fds = {'a': open_tun(args.a), 'b': open_tun(args.b)}
    peer = {'a': 'b', 'b': 'a'}
    # Per direction, keyed by the receiving side: (due time, packet), in order (the delay is constant).
    queues = {'a': collections.deque(), 'b': collections.deque()}
    state = {'delay': args.delay_ms / 1000.0, 'loss': args.loss, 'blackhole': False}
    stats = {'forwarded': 0, 'dropped': 0, 'bytes': 0, 'writeErrors': 0}
    stdin = sys.stdin.fileno()

    def answer(obj):
        sys.stdout.write(json.dumps(obj) + '\n')
        sys.stdout.flush()

    def command(line):
        words = line.split()
        if not words:
            return
        if words[0] == 'set' and len(words) == 3:
            state['delay'] = max(0.0, float(words[1]) / 1000.0)
            state['loss'] = min(1.0, max(0.0, float(words[2])))
            answer({'ok': True, 'delayMs': state['delay'] * 1000, 'loss': state['loss']})
        elif words[0] == 'blackhole' and len(words) == 2 and words[1] in ('on', 'off'):
            state['blackhole'] = words[1] == 'on'
            answer({'ok': True, 'blackhole': state['blackhole']})
        elif words[0] == 'stats':
            answer({'ok': True, **stats})
        else:
            answer({'ok': False, 'error': 'unknown command: ' + line.strip()})

    answer({'ok': True, 'ready': [args.a, args.b]})
    pending = b''
    while True:
        now = time.monotonic()
        due = [q[0][0] for q in queues.values() if q]
        timeout = max(0.0, min(due) - now) if due else None
        readable, _, _ = select.select([fds['a'], fds['b'], stdin], [], [], timeout)
        for fd in readable:
            if fd == stdin:
                chunk = os.read(stdin, 4096)
                if not chunk:
                    return
                pending += chunk
                while b'\n' in pending:
                    line, pending = pending.split(b'\n', 1)
                    command(line.decode())
                continue
            side = 'a' if fd == fds['a'] else 'b'
            # Drain what is there now (bounded, so the other direction is not starved).
            for _ in range(256):
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if state['blackhole'] or rng.random() < state['loss']:
                    stats['dropped'] += 1
                    continue
                queues[peer[side]].append((time.monotonic() + state['delay'], packet))
        now = time.monotonic()
        for side, queue in queues.items():
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                try:
                    os.write(fds[side], packet)
                    stats['forwarded'] += 1
                    stats['bytes'] += len(packet)
                except OSError:
                    # The device's queue is full or it is down: the packet is lost, as on a wire.
                    stats['writeErrors'] += 1


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        pass

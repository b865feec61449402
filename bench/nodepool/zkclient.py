"""Run with Nodepool's own interpreter (its virtualenv), never imported by the bench.

Talks to Nodepool's ZooKeeper through Nodepool's own ``nodepool.zk`` API, as
Zuul does, and prints one JSON object per line on stdout:

    python zkclient.py --hosts H:P --ca CA --cert C --key K wait-ready LABEL N TIMEOUT
        -> {"event": "ready", "count": N, "seen": time.time(), "ready_times": [...]}
           (each node's state_time when it was seen ready) or {"event": "timeout", ...}
    ... request LABEL COUNT TIMEOUT
        -> per request {"event": "request", "submitted": t0, "fulfilled": t1,
           "seconds": t1 - t0, "state": "fulfilled"}: a NodeRequest for one LABEL node
           stored, its fulfilment seen by a ZooKeeper data watch; then, as Zuul
           does, the node locked, marked in-use and the request deleted.

Only standard output carries results; errors go to stderr as one line.
"""

import argparse
import json
import sys
import threading
import time


def emit(**data):
    print(json.dumps(data), flush=True)


def connect(args):
    from nodepool import zk
    from nodepool.zk import zookeeper as zkmod
    client = zk.ZooKeeperClient(args.hosts, tls_cert=args.cert, tls_key=args.key,
                                tls_ca=args.ca, timeout=30)
    client.connect()
    return client, zkmod.ZooKeeper(client, enable_cache=True), zkmod


def wait_ready(args, zk, zkmod):
    deadline = time.monotonic() + args.timeout
    while True:
        ready = [n for n in zk.nodeIterator(cached=False)
                 if n.state == zkmod.READY and args.label in n.type and not n.allocated_to]
        if len(ready) >= args.count:
            emit(event='ready', count=len(ready), seen=time.time(),
                 ready_times=sorted(n.state_time for n in ready))
            return 0
        if time.monotonic() > deadline:
            states = {}
            for n in zk.nodeIterator(cached=False):
                states[n.state] = states.get(n.state, 0) + 1
            emit(event='timeout', count=len(ready), seen=time.time(), states=states)
            return 1
        time.sleep(args.interval)


def request(args, zk, zkmod):
    kazoo = zk.kazoo_client
    for i in range(args.count):
        req = zkmod.NodeRequest()
        req.state = zkmod.REQUESTED
        req.node_types.append(args.label)
        req.requestor = 'devstack-gate-bench'
        req.tenant_name = 'bench'
        done = threading.Event()
        seen = {}

        def watch(data, stat, event=None, seen=seen, done=done):
            if data is None:
                return False
            state = json.loads(data.decode('utf8')).get('state')
            if state in (zkmod.FULFILLED, zkmod.FAILED) and not done.is_set():
                seen['at'] = time.time()
                seen['state'] = state
                done.set()
                return False
            return True

        submitted = time.time()
        req.created_time = submitted
        zk.storeNodeRequest(req)
        kazoo.DataWatch(zk._requestPath(req.id), watch)
        if not done.wait(args.timeout):
            emit(event='request', index=i, submitted=submitted, fulfilled=None, seconds=None,
                 state='timeout')
            zk.deleteNodeRequest(req)
            return 1
        emit(event='request', index=i, submitted=submitted, fulfilled=seen['at'],
             seconds=seen['at'] - submitted, state=seen['state'])
        zk.updateNodeRequest(req)
        for node_id in req.nodes:                       # what Zuul does next
            node = zk.getNode(node_id)
            zk.lockNode(node, blocking=True, timeout=30)
            node.state = zkmod.IN_USE
            zk.storeNode(node)
            zk.unlockNode(node)
        zk.deleteNodeRequest(req)
    return 0


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument('--hosts', required=True)
    p.add_argument('--ca', required=True)
    p.add_argument('--cert', required=True)
    p.add_argument('--key', required=True)
    p.add_argument('--interval', type=float, default=0.1)
    p.add_argument('what', choices=('wait-ready', 'request'))
    p.add_argument('label')
    p.add_argument('count', type=int)
    p.add_argument('timeout', type=float)
    args = p.parse_args(argv)
    try:
        client, zk, zkmod = connect(args)
    except Exception as e:
        print('zkclient: cannot connect to ZooKeeper %s: %s' % (args.hosts, e), file=sys.stderr)
        return 2
    try:
        return (wait_ready if args.what == 'wait-ready' else request)(args, zk, zkmod)
    except Exception as e:
        print('zkclient: %s: %s: %s' % (args.what, type(e).__name__, e), file=sys.stderr)
        return 2
    finally:
        try:
            zk.disconnect() if hasattr(zk, 'disconnect') else client.disconnect()
        except Exception:
            pass


if __name__ == '__main__':
    sys.exit(main())

"""A private ZooKeeper over TLS for Nodepool: Debian's package, our own process.

Nodepool 11 talks to ZooKeeper over TLS only, so the bench makes a throwaway
CA, a server and a client certificate (openssl, in the bench's work dir), and
starts ``QuorumPeerMain`` standalone on a free loopback port with a private
data dir.  The system service, if any, is never touched.
"""

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import time

from bench.nodepool.install import ToolMissing

#: Debian's package layout.
ZK_JAR = '/usr/share/java/zookeeper.jar'
ZK_CONF = '/etc/zookeeper/conf'
ZK_MAIN = 'org.apache.zookeeper.server.ZooKeeperServerMain'
#: Jars the package's manifest leaves out but its Netty TLS server needs (added
#: when present), and a logger binding so its log says why it stopped.
EXTRA_JARS = ('/usr/share/java/netty-codec.jar', '/usr/share/java/netty-resolver.jar',
              '/usr/share/java/netty-transport-native-unix-common.jar',
              '/usr/share/java/slf4j-simple.jar')
#: Seconds ZooKeeper may take to answer TLS on its port.
STARTUP_TIMEOUT = 60
#: Days the throwaway certificates are valid.
CERT_DAYS = 2
#: The JVM's heap: a ZooKeeper for one launcher needs little.
HEAP = '256m'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _openssl(*args, cwd):
    got = subprocess.run(['openssl'] + list(args), cwd=cwd, capture_output=True, text=True,
                         stdin=subprocess.DEVNULL, timeout=120)
    if got.returncode != 0:
        raise RuntimeError('openssl %s failed: %s' % (args[0], got.stderr.strip()[-300:]))


def make_certs(directory):
    """A CA and a server and client certificate signed by it: {'ca', 'server_cert',
    'server_key', 'server_pem' (key + cert, ZooKeeper's PEM keystore), 'client_cert',
    'client_key'} as paths."""
    if shutil.which('openssl') is None:
        raise ToolMissing('openssl is not installed (needed for ZooKeeper TLS)')
    os.makedirs(directory, exist_ok=True)
    days = str(CERT_DAYS)
    _openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key',
             '-out', 'ca.pem', '-days', days, '-subj', '/CN=bench-nodepool-ca', cwd=directory)
    with open(os.path.join(directory, 'san.cnf'), 'w') as f:
        f.write('subjectAltName=IP:127.0.0.1,DNS:localhost\n')
    for who in ('server', 'client'):
        _openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', '%s.key' % who,
                 '-out', '%s.csr' % who, '-subj', '/CN=localhost', cwd=directory)
        _openssl('x509', '-req', '-in', '%s.csr' % who, '-CA', 'ca.pem', '-CAkey', 'ca.key',
                 '-CAcreateserial', '-out', '%s.pem' % who, '-days', days,
                 '-extfile', 'san.cnf', cwd=directory)
    with open(os.path.join(directory, 'server-keystore.pem'), 'w') as out:
        for part in ('server.key', 'server.pem'):
            with open(os.path.join(directory, part)) as f:
                out.write(f.read())
    for name in os.listdir(directory):
        if name.endswith('.key') or name.endswith('keystore.pem'):
            os.chmod(os.path.join(directory, name), 0o600)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    return {'ca': p('ca.pem'), 'server_cert': p('server.pem'), 'server_key': p('server.key'),
            'server_pem': p('server-keystore.pem'), 'client_cert': p('client.pem'),
            'client_key': p('client.key')}


def zoo_cfg(data_dir, port, certs):
    """The text of a standalone zoo.cfg with only a TLS client port."""
    lines = [
        'tickTime=2000',
        'dataDir=%s' % data_dir,
        'secureClientPort=%d' % port,
        'secureClientPortAddress=127.0.0.1',
        'serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory',
        'ssl.keyStore.location=%s' % certs['server_pem'],
        'ssl.keyStore.type=PEM',
        'ssl.trustStore.location=%s' % certs['ca'],
        'ssl.trustStore.type=PEM',
        'ssl.clientAuth=need',
        'admin.enableServer=false',
        'maxClientCnxns=0',
        'autopurge.purgeInterval=0',
    ]
    return '\n'.join(lines) + '\n'


def _answers_tls(port, certs):
    context = ssl.create_default_context(cafile=certs['ca'])
    context.load_cert_chain(certs['client_cert'], certs['client_key'])
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2) as raw:
            with context.wrap_socket(raw, server_hostname='127.0.0.1'):
                return True
    except (OSError, ssl.SSLError):
        return False


@contextlib.contextmanager
def zookeeper(workdir):
    """Run a private ZooKeeper with TLS; yields {'host', 'port', 'ca', 'cert', 'key'}
    (the client side, for nodepool.yaml's zookeeper-servers and zookeeper-tls)."""
    java = shutil.which('java')
    if java is None:
        raise ToolMissing('java is not installed (ZooKeeper needs it)')
    if not os.path.exists(ZK_JAR):
        raise ToolMissing('ZooKeeper is not installed (%s missing; apt-get install zookeeper)'
                          % ZK_JAR)
    root = os.path.join(workdir, 'zookeeper')
    data = os.path.join(root, 'data')
    os.makedirs(data, exist_ok=True)
    certs = make_certs(os.path.join(root, 'tls'))
    port = free_port()
    cfg = os.path.join(root, 'zoo.cfg')
    with open(cfg, 'w') as f:
        f.write(zoo_cfg(data, port, certs))
    log_path = os.path.join(root, 'zookeeper.log')
    argv = [java, '-Xmx%s' % HEAP, '-Dzookeeper.log.dir=%s' % root,
            '-Dzookeeper.root.logger=INFO,CONSOLE', '-cp', ':'.join([ZK_CONF, ZK_JAR] + [j for j in EXTRA_JARS if os.path.exists(j)]),
            ZK_MAIN, cfg]
    log = open(log_path, 'wb')
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=root)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _answers_tls(port, certs):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError('ZooKeeper did not answer TLS on port %d (exit %s): %s'
                                   % (port, proc.poll(), _tail(log_path)))
            time.sleep(0.2)
        yield {'host': '127.0.0.1', 'port': port, 'ca': certs['ca'],
               'cert': certs['client_cert'], 'key': certs['client_key'], 'log': log_path}
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _tail(path, chars=600):
    try:
        with open(path, errors='replace') as f:
            return ' | '.join(f.read()[-chars:].splitlines()[-5:])
    except OSError:
        return ''

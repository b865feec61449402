"""The two sides' configurations, and the settings stated in the table (pure).

Both sides run at their own default settings.  What a side is told beyond
"this is the cloud, keep N nodes of this label" is a *stated setting*: it is
listed in :data:`NODEPOOL_SETTINGS` / :func:`stated_settings` with the reason,
and goes into the table's detail and the JSON.
"""

import os

LABEL = 'precise'
BASE_IMAGE = 'Ubuntu 12.04 LTS'
#: The flavor both sides ask for (the label's smallest flavor with this RAM).
MIN_RAM = 512
CLOUD_IMAGE = 'ubuntu-base'
POOL = 'main'
USERNAME = 'jenkins'
#: The nodes' SSH port: the default of both sides (22) when we may bind it.
DEFAULT_SSH_PORT = 22
#: Where the nodes' sshd listens when this process may not bind port 22.
UNPRIVILEGED_SSH_PORT = 2222


def node_ssh_port(euid=None):
    euid = os.geteuid() if euid is None else euid
    return DEFAULT_SSH_PORT if euid == 0 else UNPRIVILEGED_SSH_PORT


def nodepool_yaml(zk, cloud, nodes, host_key_checking=True, ssh_port=DEFAULT_SSH_PORT,
                  label=LABEL, image=BASE_IMAGE):
    """nodepool.yaml as a mapping: one OpenStack provider on `cloud` (a clouds.yaml
    entry name), one pool of `nodes` max-servers, `nodes` min-ready of `label`;
    every other setting at Nodepool's default.  `zk` is {'host', 'port', 'ca',
    'cert', 'key'}."""
    cloud_image = {'name': CLOUD_IMAGE, 'image-name': image, 'username': USERNAME}
    if ssh_port != DEFAULT_SSH_PORT:
        cloud_image['connection-port'] = ssh_port
    pool = {'name': POOL, 'max-servers': nodes,
            'labels': [{'name': label, 'cloud-image': CLOUD_IMAGE, 'min-ram': MIN_RAM}]}
    if not host_key_checking:
        pool['host-key-checking'] = False
    return {
        'zookeeper-servers': [{'host': zk['host'], 'port': zk['port']}],
        'zookeeper-tls': {'ca': zk['ca'], 'cert': zk['cert'], 'key': zk['key']},
        'labels': [{'name': label, 'min-ready': nodes}],
        'providers': [{'name': cloud, 'driver': 'openstack', 'cloud': cloud,
                       'cloud-images': [cloud_image], 'pools': [pool]}],
    }


def our_provider(cloud, nodes, ssh_port=DEFAULT_SSH_PORT, label=LABEL, image=BASE_IMAGE):
    """Our provider entry: `nodes` max-servers and min-ready; the rest default."""
    provider = {'name': cloud, 'cloud': cloud, 'max-servers': nodes,
                'images': [{'name': label, 'base-image': image, 'min-ram': MIN_RAM,
                            'min-ready': nodes}]}
    if ssh_port != DEFAULT_SSH_PORT:
        provider['ssh-port'] = ssh_port
    return provider


def stated_settings(host_key_checking=True, ssh_port=DEFAULT_SSH_PORT):
    """{setting: why} for every Nodepool setting or option that is not its default
    beyond pointing it at the cloud (zookeeper-servers/-tls, the provider's cloud,
    the cloud image's name, the label and pool size)."""
    out = {
        'nodepool-launcher --no-webapp':
            'the status web app (default port 8005 on 0.0.0.0) is not measured and '
            'must not clash between runs; the launcher itself is unchanged',
        'cloud-images.username: %s' % USERNAME:
            'the image\'s login user, as our side\'s default (informational: '
            'Nodepool does not log in)',
        'labels.min-ram: %d' % MIN_RAM: 'the same flavor as our side is given',
    }
    if not host_key_checking:
        out['pools.host-key-checking: false'] = (
            'the second Nodepool variant: no host-key scan before ready (the stock scan '
            'was seen to stall some scans until boot-timeout)')
    if ssh_port != DEFAULT_SSH_PORT:
        out['cloud-images.connection-port: %d' % ssh_port] = (
            'not root: the nodes\' sshd cannot bind 22 (our side gets ssh-port %d too)'
            % ssh_port)
    return out


def our_settings(ssh_port=DEFAULT_SSH_PORT):
    out = {'images.min-ram: %d' % MIN_RAM: 'the same flavor as Nodepool is given'}
    if ssh_port != DEFAULT_SSH_PORT:
        out['ssh-port: %d' % ssh_port] = 'not root: the nodes\' sshd cannot bind 22'
    return out

"""The product's ``ip-type: floating`` through a cloud's network service (Neutron),
as most clouds now give addresses: the node is checked and recorded at its
floating address, which really reaches its SSH (the local cloud forwards it)."""

import threading

from tests.pool import Pool, cloud_config, make_base_dir, provider


def test_launch_reaches_nodes_by_their_floating_ip_through_neutron(tmp_path, clouds_for,
                                                                   sqlite_url):
    base = make_base_dir(tmp_path)
    clouds = clouds_for(cloud_config('rax', base, **{'network-service': True}))
    pool = Pool(tmp_path, clouds, sqlite_url, [provider('rax', **{
        'ip-type': 'floating', 'max-servers': 2, 'images': [
            {'name': 'precise', 'base-image': 'Ubuntu 12.04 LTS', 'min-ram': 512,
             'min-ready': 2}]})])
    pool.seed_base_images('rax', 'precise')
    network = clouds['rax'].adapter('network')
    (public,) = network.get('/v2.0/networks', params={
        'router:external': 'True'}).json()['networks']
    attached, stop = {}, threading.Event()

    def assign():
        # As a cloud that gives each new server a floating IP of its own.
        while not stop.is_set():
            for port in network.get('/v2.0/ports').json()['ports']:
                if port['device_id'] and port['id'] not in attached:
                    fip = network.post('/v2.0/floatingips', json={'floatingip': {
                        'floating_network_id': public['id'],
                        'port_id': port['id']}}).json()['floatingip']
                    attached[port['id']] = fip['floating_ip_address']
            stop.wait(0.1)
    assigner = threading.Thread(target=assign, daemon=True)
    assigner.start()
    try:
        proc = pool.run('devstack-vm-launch.py', 'rax')
    finally:
        stop.set()
        assigner.join(10)
    assert proc.returncode == 0, proc.stderr
    nodes = pool.nodes(provider='rax', state='ready')
    assert len(nodes) == 2
    fixed = {p['fixed_ips'][0]['ip_address'] for p in network.get('/v2.0/ports').json()['ports']}
    assert {n.ip for n in nodes} <= set(attached.values())
    assert not {n.ip for n in nodes} & fixed
    assert all(n.host_key for n in nodes)

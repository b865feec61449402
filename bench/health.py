"""Health: false failures kept from developers by infra retry, quarantine and the image guard.

A replay of gate runs through the product's own code (fetch's claim and its
provider tiers, the gate's finish, devstackgate.health's quarantine and image
guard) on a real SQLite database; only the nodes and the tests are simulated,
seeded, without clouds or SSH:

- three providers of one label, each always with a ready node (launch keeps
  the pool topped up);
- a run's node dies mid-run (an infra failure) with the provider's death rate;
  otherwise its test fails with the change's own failure rate (real bugs,
  which must stay failures) plus, on a bad image, the image's extra rate;
- *flaky*: one provider drops 30 % of its nodes mid-run from the start, and a
  bad new image becomes current on another provider a quarter into the runs;
- *healthy*: every provider and image healthy (1 % node deaths everywhere, a
  good new image half-way): nothing may be quarantined or demoted.

Each scenario runs twice, with retry, quarantine and the guard off
(gate.attempts 1) and on (the defaults).  A false failure is a run a
developer sees fail for a reason not the change's: the node died, or the bad
image failed it.  The reference of the "on" figure is the "off" one.
"""

import logging
import random
import statistics
import time

import yaml

from bench.common import Goal, Row

NAME = 'health'
LABEL = 'precise'
PROVIDERS = ('rax', 'hp', 'ovh')
FLAKY, BAD_IMAGE_ON = 'rax', 'hp'
DEATH_RATE = 0.30           # the flaky provider's nodes dying mid-run
BASELINE_DEATH = 0.01       # everyone's, in the healthy scenario
CHANGE_FAILURE = 0.10       # a change's own failures (real bugs)
BAD_IMAGE_FAILURE = 0.50    # what a bad image adds


class Simulation:
    """One scenario on one fresh database, driven through the real fetch and finish."""

    def __init__(self, ctx, url, seed, protected, deaths, bad_image_at=None, good_image_at=None):
        import vmdatabase
        from devstackgate import config as configmod
        self.rng = random.Random(seed)
        self.seed = seed
        path = '%s/health-%d-%s.yaml' % (ctx.workdir, seed, 'on' if protected else 'off')
        data = {'database': url, 'ssh-private-key': ctx.workdir + '/id_rsa',
                'auto-quarantine': protected, 'image-guard': protected,
                'gate': {'attempts': 3 if protected else 1},
                'providers': [{'name': p, 'cloud': p, 'images': [
                    {'name': LABEL, 'base-image': 'Ubuntu'}]} for p in PROVIDERS]}
        with open(path, 'w') as f:
            yaml.safe_dump(data, f)
        self.config = configmod.load(path, check_clouds=False)
        self.db = vmdatabase.Database(url).upgrade()
        self.deaths = deaths                    # provider -> death rate
        self.bad_image_at, self.good_image_at = bad_image_at, good_image_at
        self.bad_images = set()
        self.images = {p: self._image(p, 'base') for p in PROVIDERS}
        for p in PROVIDERS:
            self._ready_node(p)
        self.quarantined_at = None
        self.demoted_at = None
        self.bad_promoted = None
        self.runs_on = dict.fromkeys(PROVIDERS, 0)     # attempts per provider so far
        self.runs_on_bad = 0                            # attempts on the bad image so far
        self.quarantined_after = None                   # runs on the flaky provider by then
        self.demoted_after = None                       # runs on the bad image by then
        self.wrongful = []                      # (run, what) acted on a healthy provider or image

    def _image(self, provider, name):
        row = self.db.transact(lambda s: s.create_image(
            provider, LABEL, state='ready', name='%s-%s' % (provider, name),
            external_id='%s-%s' % (provider, name)))
        return row

    def _ready_node(self, provider):
        current = self.db.transact(lambda s: s.current_image(provider, LABEL))
        # Random age: which provider's node is the oldest (fetch's pick) is random.
        self.db.transact(lambda s: s.create_node(
            provider, LABEL, state='ready', now=time.time() - self.rng.random() * 60,
            name='%s-n' % provider, ip='127.0.0.2', username='jenkins', image_id=current.id))

    def _shuffle_ages(self):
        """Which ready node is the oldest (fetch's pick within a tier) is random."""
        def tx(s):
            for node in s.nodes(state='ready'):
                s.update_node(node.id, state_time=time.time() - 60 - self.rng.random() * 60)
        self.db.transact(tx)

    def run(self, runs):
        """(runs failed by a node, runs failed by the bad image, infra attempts)."""
        from devstackgate import fetch, gate
        by_node = by_image = infra_seen = 0
        for i in range(runs):
            if i == self.bad_image_at:
                row = self._image(BAD_IMAGE_ON, 'bad')
                self.bad_images.add(row.id)
                self.bad_promoted = i
            if i == self.good_image_at:
                self._image(BAD_IMAGE_ON, 'good')
            avoid, final, cause = [], None, None
            for _attempt in range(self.config.gate.attempts):
                self._shuffle_ages()
                node, result = fetch.fetch(self.config, LABEL, db=self.db, environ={
                    'JOB_NAME': 'gate', 'BUILD_NUMBER': str(i)}, avoid=avoid)
                self._ready_node(node.provider)
                self.runs_on[node.provider] += 1
                image_id = self.db.transact(lambda s: s.get_node(node.id)).image_id
                self.runs_on_bad += image_id in self.bad_images
                # The change's own verdict and the bad image's, drawn per run (the same
                # with the protections off and on); deaths and the pick per attempt.
                change = random.Random('%d/%d' % (self.seed, i))
                if self.rng.random() < self.deaths.get(node.provider, 0.0):
                    final, cause, detail = 'infra', 'infra', 'node stopped answering'
                elif change.random() < CHANGE_FAILURE:
                    final, cause, detail = 'failure', 'change', None
                elif image_id in self.bad_images and change.random() < BAD_IMAGE_FAILURE:
                    final, cause, detail = 'failure', 'image', None
                else:
                    final, cause, detail = 'success', None, None
                gate.finish(self.config, node.id, final, result_id=result.id, detail=detail,
                            db=self.db, environ={})
                self._observe(i)
                if final != 'infra':
                    break
                infra_seen += 1
                avoid.append(node.provider)
            by_node += cause == 'infra'
            by_image += cause == 'image'
        return by_node, by_image, infra_seen

    def _observe(self, i):
        quarantined = {q.provider for q in self.db.transact(lambda s: s.quarantines())}
        for p in quarantined:
            if self.deaths.get(p, 0) >= DEATH_RATE:
                if self.quarantined_at is None:
                    self.quarantined_at = i + 1
                    self.quarantined_after = self.runs_on[p]
            elif 'quarantine ' + p not in [what for _, what in self.wrongful]:
                self.wrongful.append((i, 'quarantine ' + p))
        for p in PROVIDERS:
            demoted = [r for r in self.db.transact(lambda s, p=p: s.images(provider=p))
                       if r.demoted]
            for r in demoted:
                if r.id in self.bad_images:
                    if self.demoted_at is None:
                        self.demoted_at = i + 1 - self.bad_promoted
                        self.demoted_after = self.runs_on_bad
                elif 'demote ' + r.name not in [what for _, what in self.wrongful]:
                    self.wrongful.append((i, 'demote ' + r.name))


def _nan(x):
    return float('nan') if x is None else x


def run(ctx):
    for name in ('health', 'gate', 'state'):
        logging.getLogger(name).setLevel(logging.ERROR)
    runs = ctx.pick(60, 200)
    healthy_runs = ctx.pick(150, 1000)
    seeds = ctx.pick([1], [1, 2, 3, 4, 5])
    rows, out = [], {False: [], True: []}
    for seed in seeds:
        for protected in (False, True):
            with ctx.database('sqlite') as url:
                sim = Simulation(ctx, url, seed=seed, protected=protected,
                                 deaths={FLAKY: DEATH_RATE}, bad_image_at=runs // 4)
                by_node, by_image, infra = sim.run(runs)
                out[protected].append(dict(by_node=by_node, by_image=by_image, infra=infra,
                                           sim=sim))
    total = runs * len(seeds)

    def share(protected, key):
        return sum(o[key] for o in out[protected]) / total
    case = '%d runs x %d seed(s); %s drops %d %% of nodes; bad image on %s at run %d' % (
        runs, len(seeds), FLAKY, DEATH_RATE * 100, BAD_IMAGE_ON, runs // 4)
    rows.append(Row(NAME, case, 'runs failed by their node, protections off',
                    share(False, 'by_node'), 'of runs',
                    detail={'per_seed': [o['by_node'] for o in out[False]]}))
    rows.append(Row(NAME, case, 'runs failed by their node, retry+quarantine on',
                    share(True, 'by_node'), 'of runs', reference=share(False, 'by_node'),
                    reference_name='with them off', goal=Goal('<', 0.01, text='< 1 % of runs'),
                    detail={'per_seed': [o['by_node'] for o in out[True]],
                            'infra_attempts': [o['infra'] for o in out[True]]}))
    rows.append(Row(NAME, case, 'runs failed by the bad image, guard on',
                    share(True, 'by_image'), 'of runs', reference=share(False, 'by_image'),
                    reference_name='guard off',
                    detail={'per_seed': [o['by_image'] for o in out[True]]}))
    for what, attr, total_attr in (
            ('runs on %s until it is quarantined' % FLAKY, 'quarantined_after', 'quarantined_at'),
            ('runs on the bad image until it is demoted', 'demoted_after', 'demoted_at')):
        values = [_nan(getattr(o['sim'], attr)) for o in out[True]]
        known = sorted(v for v in values if v == v)
        median = statistics.median(known) if len(known) == len(values) else float('nan')
        rows.append(Row(NAME, case, what + ' (median)', median, 'runs',
                        goal=Goal('<=', 20, text='<= 20 runs'),
                        detail={'per_seed': values, 'worst': max(values),
                                'all_runs_by_then': [getattr(o['sim'], total_attr)
                                                     for o in out[True]]}))
    wrongful = []
    for seed in seeds:
        with ctx.database('sqlite') as url:
            healthy = Simulation(ctx, url, seed=100 + seed, protected=True,
                                 deaths={p: BASELINE_DEATH for p in PROVIDERS},
                                 good_image_at=healthy_runs // 2)
            healthy.run(healthy_runs)
            wrongful += [what for _, what in healthy.wrongful]
    rows.append(Row(NAME, '%d healthy runs x %d seed(s) (1 %% node deaths everywhere, a good '
                    'new image)' % (healthy_runs, len(seeds)), 'wrongful quarantines or demotions',
                    len(wrongful), '', goal=Goal('==', 0, text='0'),
                    detail={'actions': wrongful[:10]}))
    return rows

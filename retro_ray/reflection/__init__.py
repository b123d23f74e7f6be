"""The reflection, as every layer sees it: its prompt (:mod:`.prompt`) and its groups
(:mod:`.groups`).

One reflection prompt is built by the reflectors (``retro_ray.agents``), the rollouts'
branching rule, the model zoo's training data and the Serve app's ``/v1/reflect``; one reflection
group (a failed trial and the ``m`` reflections sampled for it, with their measured returns) is
filled by the rollouts and turned into a batch by the learner. Both live here, below all of
them and above only ``retro_ray.envs``, so that serving needs nothing of the agent package and
rollout and learner need nothing of each other.
"""

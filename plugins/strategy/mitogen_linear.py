"""Mitogen's linear strategy (ANSIBLE_STRATEGY=mitogen_linear), from the mitogen package in .venv.

Mitogen ships this plugin inside its package directory; this file lets ansible.cfg and the
Molecule scenarios name a directory of the repository instead of .venv's site-packages path,
which depends on the Python version. It also leaves Molecule's own plays on the controller
(create and destroy, `connection: local`) to plain Ansible: their asynchronous container
starts never report back through Mitogen's local connection.
"""
import ansible_mitogen.loaders
import ansible_mitogen.strategy

Base = ansible_mitogen.loaders.strategy_loader.get("linear", class_only=True)


class StrategyModule(ansible_mitogen.strategy.StrategyMixin, Base):
    """Ansible's linear strategy, its connections and module runs through Mitogen."""

    def run(self, iterator, play_context, result=0):
        """Plain linear for a play on the controller itself, Mitogen's for the others."""
        if iterator._play.connection == "local":  # the play keyword (play_context has "ssh" yet)
            return Base.run(self, iterator, play_context)
        return super().run(iterator, play_context, result)

"""HubopsSpawner: dockerspawner's SwarmSpawner as hubops runs it, inside the hub's container.

Runs in the hub, not in the operator's hubops: import only the standard library, jupyterhub,
dockerspawner, docker, traitlets and tornado (the hub image's pinned packages), never another
hubops module (see hubops/inhub/__init__.py). Its settings are traitlets the generated
jupyterhub_config.py sets (`c.HubopsSpawner.home_mode = ...`) from the parameter file.

What it adds to SwarmSpawner:
- a persistent home per user (parameter storage.users): a bind mount of PATH/USER it creates with
  the single-user image's owner (shared-path), a per-user volume on the node the user's first
  server ran on, which later servers are pinned to (node-local), or a per-user volume of a volume
  driver (volume-driver); SwarmSpawner's own `mounts` turns volumes into bind mounts, so the
  home's mount is made here;
- a swarm without a leader (quorum lost) leaves servers running in the hub's eyes;
- the new service's task and its start are watched every 0.05-0.1 s, not 1 s growing to 11 s;
- stop returns once the old container is gone, not when the service is removed;
- under a burst, those looks are paced: the engine is asked about as often in all as for one spawn
  (each look's interval times the number of servers starting, up to max_poll_interval), and
  Docker calls run on a few threads shared by every spawner, not dockerspawner's single one;
- spawn profiles (parameter profiles:): the options form lists the profiles the user's groups
  allow; the chosen one sets the image, limits, placement and Swarm generic resources (GPUs) of
  the service, which is labelled with it (see the "spawn profiles" methods below).
- named servers (parameter spawner.named_servers): each its own service, named within Docker's 63
  characters and labelled with its user and server name (hubops.user, hubops.server);
- shared data (parameter shared_data): read-only data sets and group folders mounted into the
  servers of the users they are for, with each group folder's gid as a supplementary group.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor

from docker.errors import APIError, DockerException, NotFound
from docker.types import DriverConfig, Mount
from dockerspawner import SwarmSpawner
from tornado.httpclient import AsyncHTTPClient
from tornado import escape, web
from traitlets import Bool, Dict, Enum, Float, Integer, List, Unicode, default

# What Docker answers (HTTP 500) when the swarm's managers have lost their quorum.
NO_LEADER_SIGNS = ("does not have a leader", "too few managers are online", "context deadline exceeded")
# Task states in which a task's container may still run.
LIVE = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running"}
# Task states SwarmSpawner.start_object waits through.
WAITING = {"new", "assigned", "accepted", "starting", "pending", "preparing", "ready", "rejected"}
HOME_MODES = ("none", "shared-path", "node-local", "volume-driver")
# The service label that says which profile a server runs (hubops.core.profiles.PROFILE_LABEL).
PROFILE_LABEL = "hubops.profile"
# What Swarm puts in a pending task's status when no node has the reservation free.
NO_ROOM_SIGNS = ("insufficient resources",)


def refusal(code: int, message: str) -> web.HTTPError:
    """An error the hub shows the user as it is (the spawn page's "Spawn failed: ..." line)."""
    e = web.HTTPError(code, message)
    e.jupyterhub_message = message
    return e
# Swarm refuses longer service names, and a server is reached by its name (a DNS label).
MAX_SERVICE_NAME = 63


def fit_name(name: str, limit: int = MAX_SERVICE_NAME) -> str:
    """`name` itself when short enough, else its start and a digest of the whole (still unique)."""
    if len(name) <= limit:
        return name
    return name[:limit - 9].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def no_leader(error: Exception) -> bool:
    """Whether a Docker API error says the swarm has no leader (its managers lost their quorum)."""
    text = str(error) + " " + str(getattr(error, "explanation", "") or "")
    return any(s in text for s in NO_LEADER_SIGNS)


class HubopsSpawner(SwarmSpawner):
    """SwarmSpawner with a persistent home per user, a closer watch on the task while it starts,
    a stop that waits for the old container, and no false "stopped" while the swarm has no leader."""

    # -- users' homes (parameter storage.users) -----------------------------------------------
    home_mode = Enum(HOME_MODES, default_value="none", config=True,
                     help="storage.users.mode: none, shared-path, node-local or volume-driver")
    home_target = Unicode("/home/jovyan", config=True, help="where the home appears in the user's container")
    home_shared_path = Unicode("", config=True,
                               help="shared-path: the folder (on the hub's node and every node) holding USER/")
    home_uid = Integer(1000, config=True, help="shared-path: owner of a new home (the single-user image's user)")
    home_gid = Integer(100, config=True, help="shared-path: group of a new home")
    home_volume_prefix = Unicode("hubops", config=True, help="a home volume is named PREFIX-home-USER")
    home_labels = Dict(config=True, help="labels of a home volume (hubops.user=USER is added)")
    home_driver = Unicode("", config=True, help="volume-driver: the volume driver")
    home_driver_opts = Dict(config=True, help="volume-driver: its options; {username} becomes the user's name")

    # -- how closely starts and stops are watched --------------------------------------------
    new_task_poll_interval = Float(0.05, config=True,
                                   help="while a service is created: seconds between asking for its first task")
    new_task_polls = Integer(40, config=True,
                             help="how many times to ask before leaving it to SwarmSpawner (which sleeps 1 s)")
    task_poll_interval = Float(0.1, config=True, help="seconds between looks at a starting task")
    answer_poll_interval = Float(0.1, config=True, help="seconds between tries of a started server's HTTP port")
    answer_connect_timeout = Float(0.3, config=True,
                                   help="how long one try waits for its connection: a try made before the overlay "
                                        "knows the new container loses its SYN, and the kernel would resend it "
                                        "only 1 s, then 3 s later, long after the server answers")
    stop_wait_timeout = Float(60, config=True, help="how long stop waits for the old container to go")
    stop_poll_interval = Float(0.5, config=True, help="seconds between looks at the old service's tasks")
    max_poll_interval = Float(1.0, config=True,
                              help="the longest interval a look is stretched to while many servers start at once")
    docker_threads = Integer(4, config=True,
                             help="threads for Docker API calls, shared by every spawner (dockerspawner has 1: "
                                  "under a burst every user's calls queued behind each other)")

    # -- lockdown (parameters spawner.cap_add, pids_limit) -------------------------------------
    cap_drop = List(Unicode(), default_value=["ALL"], config=True,
                    help="capabilities removed from the server's container (Swarm CapabilityDrop)")
    cap_add = List(Unicode(), config=True, help="capabilities given back (Swarm CapabilityAdd)")
    no_new_privileges = Bool(True, config=True,
                             help="no privilege gained through exec (setuid, file capabilities); engines "
                                  "whose API lacks it for services ignore it, the image has no setuid program")
    pids_limit = Integer(0, config=True, help="processes and threads in the server's container (0: no limit)")

    # -- spawn profiles (parameter profiles:) --------------------------------------------------
    profiles = List(Dict(), config=True,
                    help="spawn profiles: each {name, description, image, mem_limit, cpu_limit, mem_guarantee, "
                         "cpu_guarantee, constraints, groups, generic_resources, when_full}; with two or more "
                         "that a user may choose, the spawn page lists them")

    # node-local: the ID of the node that holds the user's home volume. Kept in the spawner's
    # state (get_state), and not cleared when the server stops, so later servers go there.
    home_node = Unicode(None, allow_none=True)
    _creating = False
    _created_at = 0.0
    # Servers starting now (every HubopsSpawner of this hub), which paces the looks (paced()).
    _starting = 0
    _hubops_executor = None

    @property
    def executor(self):
        """One pool of docker_threads threads for every spawner's Docker calls (dockerspawner: one thread)."""
        if HubopsSpawner._hubops_executor is None:
            HubopsSpawner._hubops_executor = ThreadPoolExecutor(max(1, self.docker_threads),
                                                                thread_name_prefix="hubops-docker")
        return HubopsSpawner._hubops_executor

    def paced(self, interval: float) -> float:
        """`interval` stretched by the number of servers starting at once (up to max_poll_interval, never
        below `interval`): one spawn is watched as closely as before, twenty do not ask twenty times as much."""
        return max(interval, min(self.max_poll_interval, interval * HubopsSpawner._starting))

    # -- shared data (parameter shared_data) ---------------------------------------------------
    datasets = List(Dict(), config=True,
                    help="read-only data sets: {name, target, type (bind|volume), source, driver, driver_opts, "
                         "labels, groups (empty: everyone), on_request}")
    group_folders = List(Dict(), config=True,
                         help="group folders: {group, gid, target, type (bind|volume), source, driver, driver_opts, labels}")
    userlist_groups = Dict(config=True, help="the userlist's groups of each user (user -> [group])")
    # The hook a profile uses: the names of on_request data sets this server gets (set before start).
    requested_datasets = List(Unicode())

    @default("object_name")
    def _object_name_default(self):
        """dockerspawner's name ({prefix}-{username}, or {prefix}-{username}--{servername} for a named
        server), shortened with a digest when longer than Swarm allows."""
        return fit_name(super()._object_name_default())

    @property
    def home_volume(self) -> str:
        return self.home_volume_prefix + "-home-" + self.escaped_name

    @property
    def home_path(self) -> str:
        return self.home_shared_path.rstrip("/") + "/" + self.escaped_name

    @property
    def mounts(self):
        mode = self.home_mode
        if mode == "none":
            return super().mounts
        if mode == "shared-path":
            return [Mount(target=self.home_target, source=self.home_path, type="bind")]
        labels = dict(self.home_labels, **{"hubops.user": self.user.name})
        driver = None
        if mode == "volume-driver":
            opts = {k: v.replace("{username}", self.escaped_name) for k, v in self.home_driver_opts.items()}
            driver = DriverConfig(self.home_driver, opts or None)
        return [Mount(target=self.home_target, source=self.home_volume, type="volume", labels=labels,
                      driver_config=driver)]

    def load_state(self, state):
        super().load_state(state)
        self.home_node = state.get("home_node") or self.home_node

    def get_state(self):
        state = super().get_state()
        if self.home_node:
            state["home_node"] = self.home_node
        return state

    def prepare_home_dir(self) -> None:
        """shared-path: PATH/USER exists, owned by the single-user image's user, before the server starts."""
        path, uid, gid = self.home_path, self.home_uid, self.home_gid
        try:
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
                os.chown(path, uid, gid)
                self.log.info("hubops: created home %s (owner %s:%s) for %s", path, uid, gid, self.user.name)
            st = os.stat(path)
            if (st.st_uid, st.st_gid) != (uid, gid):
                self.log.warning("hubops: home %s is owned by %s:%s, not %s:%s; the server may not write to it",
                                 path, st.st_uid, st.st_gid, uid, gid)
        except OSError as e:
            raise RuntimeError(
                f"hubops: cannot prepare the home {path} (owner {uid}:{gid}) of {self.user.name}: {e}. "
                f"Is {self.home_shared_path} mounted on the hub's node and writable by root there "
                "(NFS: export with no_root_squash, or create the directory beforehand with that owner)?"
            ) from e

    async def prepare_home_through_door(self) -> None:
        """shared-path, the hub not being root: hubops's Docker API door (apiproxy.py) makes PATH/USER
        with the users' owner (the hub has neither the path nor the right to chown)."""
        url = self.client._url("/hubops/homes/{0}", self.escaped_name)
        resp = await self.docker("_post", url)
        if resp.status_code != 200:
            raise RuntimeError(f"hubops: the Docker API door could not prepare the home of {self.user.name}: "
                               f"{resp.status_code} {resp.text[:300]}")
        made = resp.json()
        if made.get("created"):
            self.log.info("hubops: created home %s (owner %s:%s) for %s", made.get("path"), made.get("uid"),
                          made.get("gid"), self.user.name)
    def group_names(self) -> set[str]:
        """The user's groups: the userlist's, and the hub's (an identity provider's, set at login)."""
        names = set(self.userlist_groups.get(self.user.name) or [])
        try:
            names |= {g.name for g in self.user.groups}
        except Exception:  # noqa: BLE001 - a user object without groups (tests): the userlist's alone
            pass
        return names

    @staticmethod
    def data_mount(item: dict, read_only: bool) -> Mount:
        if item.get("type") == "volume":
            return Mount(target=item["target"], source=item["source"], type="volume", read_only=read_only,
                         labels=dict(item.get("labels") or {}),
                         driver_config=DriverConfig(item["driver"], dict(item.get("driver_opts") or {}) or None))
        return Mount(target=item["target"], source=item["source"], type="bind", read_only=read_only)

    def shared_data(self) -> tuple[list[Mount], list[str]]:
        """The shared-data mounts this server gets and the supplementary groups (gids) that go with them."""
        groups = self.group_names()
        mounts, gids = [], []
        for d in self.datasets:
            if d.get("groups") and not groups & set(d["groups"]):
                continue
            if d.get("on_request") and d["name"] not in self.requested_datasets:
                continue
            mounts.append(self.data_mount(d, read_only=True))
        for f in self.group_folders:
            if f["group"] in groups:
                mounts.append(self.data_mount(f, read_only=False))
                gids.append(str(f["gid"]))
        return mounts, gids

    def add_shared_data(self, task_template: dict) -> dict:
        """The service's task template with the user's shared data mounted and its groups' gids added."""
        mounts, gids = self.shared_data()
        cs = task_template.setdefault("ContainerSpec", {})
        if mounts:
            cs["Mounts"] = [*(cs.get("Mounts") or []), *mounts]
        if gids:
            cs["Groups"] = sorted(set(cs.get("Groups") or []) | set(gids))
        return task_template

    def label_server(self, create_kwargs: dict) -> dict:
        """The service's and its containers' labels say whose server it is, and which (named) one.
        Copies: the configured label dicts are shared by every spawner."""
        mine = {"hubops.user": self.user.name, "hubops.server": self.name or ""}
        create_kwargs["labels"] = {**(create_kwargs.get("labels") or {}), **mine}
        cs = (create_kwargs.get("task_template") or {}).get("ContainerSpec")
        if cs is not None:
            cs["Labels"] = {**(cs.get("Labels") or {}), **mine}
        return create_kwargs

    def user_home_node(self) -> str | None:
        """node-local: the node holding the user's home, as another of the user's servers (a named
        one, or the default) recorded it: all of a user's servers share one home."""
        try:
            spawners = dict(self.user.orm_spawners)
        except Exception:  # noqa: BLE001 - no ORM (tests)
            return None
        for name, orm_spawner in sorted(spawners.items()):
            node = (getattr(orm_spawner, "state", None) or {}).get("home_node")
            if node and name != self.name:
                return node
        return None

    async def node_exists(self, node_id: str) -> bool:
        try:
            await self.docker("inspect_node", node_id)
        except NotFound:
            return False
        return True

    async def node_down(self, node_id: str | None) -> bool:
        if not node_id:
            return False
        try:
            node = await self.docker("inspect_node", node_id)
        except NotFound:
            return True
        return (node.get("Status") or {}).get("State") == "down"

    async def get_object(self):
        """As SwarmSpawner's, except that a swarm without a leader (quorum lost) is an error, not "gone":
        Docker answers it with HTTP 500, which SwarmSpawner takes for a service on an unhealthy node."""
        try:
            obj = await self.docker("inspect_%s" % self.object_type, self.object_name)
        except APIError as e:
            if no_leader(e):
                raise
            return await super().get_object()
        self.object_id = obj[self.object_id_key]
        return obj

    async def poll(self):
        """While the swarm has no leader, nothing can be known about services, and nothing stops them
        either: the server is taken as running (the hub would otherwise drop its route and record)."""
        try:
            return await super().poll()
        except APIError as e:
            if not no_leader(e):
                raise
            self.log.warning("hubops: the swarm has no leader (quorum lost); %s's server is taken as still "
                             "running: %s", self.user.name, e)
            return None
        except (DockerException, OSError) as e:
            # The engine (the hub's Docker API door, stages/apiproxy.py) did not answer: restarting, or
            # started after the hub. Nothing is known, nothing stopped: as without a leader.
            # (requests' ConnectionError is an OSError.)
            self.log.warning("hubops: Docker did not answer (%s); %s's server is taken as still running", e,
                             self.user.name)
            return None

    async def create_object(self):
        self._creating = True
        try:
            return await super().create_object()
        finally:
            self._creating = False
            self._created_at = time.monotonic()

    def lock_down(self, task_template: dict) -> dict:
        """The service's task template with the lockdown settings (what docker-py's types have no
        argument for is set on the API's own keys)."""
        cs = task_template.setdefault("ContainerSpec", {})
        if self.cap_drop:
            cs["CapabilityDrop"] = list(self.cap_drop)
        if self.cap_add:
            cs["CapabilityAdd"] = list(self.cap_add)
        if self.no_new_privileges:
            cs.setdefault("Privileges", {})["NoNewPrivileges"] = True
        if self.pids_limit:
            task_template.setdefault("Resources", {}).setdefault("Limits", {})["Pids"] = int(self.pids_limit)
        return task_template

    async def docker(self, method, *args, **kwargs):
        """While the service is being created, SwarmSpawner asks for its task and sleeps a whole
        second when there is none yet; Swarm makes it within milliseconds. Ask again sooner.
        A new service gets the lockdown settings (lock_down)."""
        if method == "create_service" and kwargs.get("task_template") is not None:
            self.lock_down(kwargs["task_template"])
            self.profile_service(kwargs)
            self.add_shared_data(kwargs["task_template"])
            self.label_server(kwargs)
        result = await super().docker(method, *args, **kwargs)
        if method == "tasks" and self._creating and not result:
            for _ in range(self.new_task_polls):
                await asyncio.sleep(self.paced(self.new_task_poll_interval))
                result = await super().docker(method, *args, **kwargs)
                if result:
                    break
        return result

    async def start_object(self):
        """Wait for the service's task to run, looking every 0.1 s: SwarmSpawner waits 1 s, then
        1.5 times longer each time up to 11 s, which alone can double a spawn."""
        while True:
            task = await self.get_task()
            if not task:
                raise RuntimeError("Service %s not found" % self.service_name)
            state = task["Status"]["State"].lower()
            if state not in WAITING:
                break
            self.refuse_when_full(task)
            await asyncio.sleep(self.paced(self.task_poll_interval))
        if state != "running":
            raise RuntimeError("Service %s not running: %s" % (self.service_name, task["Status"]))

    async def wait_until_answering(self, ip: str, port: int) -> None:
        """Return once the server answers HTTP at all. The hub's own check backs off exponentially
        (0.2 s, 0.4 s, ... up to 5 s); answering here, in 0.1 s steps, makes its first try succeed.
        Each try gives up its connection after answer_connect_timeout: on an overlay network the first
        tries to a new container can lose their SYN (measured: the first try hung for its whole 2 s
        while the server had answered for 1.2 s), and a new connection gets through at once."""
        base = getattr(getattr(self, "server", None), "base_url", None) or "/"
        url = "http://%s:%s%sapi" % (ip, port, base)
        client = AsyncHTTPClient()
        deadline = time.monotonic() + self.http_timeout
        while time.monotonic() < deadline:
            try:
                await client.fetch(url, raise_error=False, connect_timeout=self.answer_connect_timeout,
                                   request_timeout=2, follow_redirects=False)
                return
            except Exception:  # noqa: BLE001 - not listening yet, or its name not yet in DNS
                await asyncio.sleep(self.paced(self.answer_poll_interval))
        # Give up quietly: the hub's own check decides, with its own timeout and message.

    async def stop(self, now=False):
        """Stop, then wait until the old container is gone: Swarm removes a service's tasks only once
        their containers have stopped, and until then the service's DNS name still reaches the old
        container, so an immediate restart could be judged "up" by it while both use the same home."""
        service_id, name = self.object_id, self.object_name
        await super().stop(now=now)
        if not service_id or not name:
            return
        deadline = time.monotonic() + self.stop_wait_timeout
        while time.monotonic() < deadline:
            tasks = await self.docker("tasks", filters={"name": name})
            live = [t for t in tasks if t.get("ServiceID") == service_id and t["Status"]["State"] in LIVE]
            # A task on a node that is down stays "running" in Swarm's records until the node returns
            # (and is then shut down): nothing to wait for.
            if not [t for t in live if not await self.node_down(t.get("NodeID"))]:
                return
            await asyncio.sleep(self.stop_poll_interval)
        self.log.warning("hubops: the old container of %s still runs %s s after its service was removed",
                         name, self.stop_wait_timeout)

    async def start(self):
        HubopsSpawner._starting += 1
        try:
            return await self._start()
        finally:
            HubopsSpawner._starting -= 1

    async def _start(self):
        self.apply_profile()
        mode = self.home_mode
        if mode == "shared-path" and os.geteuid() != 0 and os.environ.get("DOCKER_HOST", "").startswith("unix://"):
            await self.prepare_home_through_door()
        elif mode == "shared-path":
            self.prepare_home_dir()
        elif mode == "node-local":
            self.home_node = self.home_node or self.user_home_node()
            if self.home_node and not await self.node_exists(self.home_node):
                # The node left the swarm (removed, or a restore onto another cluster): its volume is
                # gone with it. Start anew on any node rather than wait forever for "no suitable node".
                self.log.warning("hubops: the home of %s was on node %s, which is no longer in the swarm; "
                                 "a new, empty home is made where the server starts", self.user.name, self.home_node)
                self.home_node = None
            spec = dict(self.extra_placement_spec)
            constraints = [c for c in spec.get("constraints") or [] if not c.startswith("node.id==")]
            if self.home_node:
                constraints.append("node.id==" + self.home_node)
            self.extra_placement_spec = dict(spec, constraints=constraints)
        t0 = self._created_at = time.monotonic()
        result = await super().start()
        running = time.monotonic()
        await self.wait_until_answering(*result)
        # Where this start's time went, for an operator asking why spawns are slow (ops diagnose, bench/).
        self.log.info("hubops: %s's server: service created in %.3f s, its task running %.3f s later, "
                      "the server answering %.3f s after that", self._log_name, self._created_at - t0,
                      running - self._created_at, time.monotonic() - running)
        if mode == "node-local" and not self.home_node:
            task = await self.get_task()
            self.home_node = (task or {}).get("NodeID") or None
            self.log.info("hubops: home volume %s of %s is on node %s; later servers go there",
                          self.home_volume, self.user.name, self.home_node)
        return result

    # -- spawn profiles (parameter profiles:) ----------------------------------------------------
    # Kept apart from the rest: the options form, the choice, and what the choice changes.
    _profile = None  # the profile this start uses (a dict of `profiles`), set by apply_profile

    def user_groups(self) -> set:
        return {g.name for g in getattr(self.user, "groups", None) or []}

    def allowed_profiles(self) -> list:
        """The profiles this user may choose: those without groups, and those naming one of the user's groups."""
        mine = self.user_groups()
        return [pr for pr in self.profiles if not pr.get("groups") or mine & set(pr["groups"])]

    def profile_form(self) -> str:
        """The spawn page's form: one radio button per profile the user may choose (none with one or no choice)."""
        choices = self.allowed_profiles()
        if len(choices) < 2:
            return ""
        chosen = (self.user_options or {}).get("profile") or choices[0]["name"]
        items = []
        for pr in choices:
            esc = lambda v: escape.xhtml_escape(str(v))  # noqa: E731
            facts = [f"image {pr.get('image')}"]
            if pr.get("mem_limit"):
                facts.append(f"memory {pr['mem_limit']}")
            if pr.get("cpu_limit"):
                facts.append(f"{pr['cpu_limit']:g} CPU" + ("" if pr["cpu_limit"] == 1 else "s"))
            facts += [f"{n} {kind}" for kind, n in (pr.get("generic_resources") or {}).items()]
            items.append(
                '<div class="radio hubops-profile">'
                f'<label><input type="radio" name="profile" value="{esc(pr["name"])}" id="profile-{esc(pr["name"])}"'
                f'{" checked" if pr["name"] == chosen else ""}> <strong>{esc(pr["name"])}</strong>'
                f'{(" &mdash; " + esc(pr["description"])) if pr.get("description") else ""}'
                f'<br><small class="text-muted">{esc(", ".join(facts))}</small></label></div>')
        return '<fieldset><legend>Choose a profile</legend>' + "".join(items) + "</fieldset>"

    async def get_options_form(self):
        if self.profiles:
            return self.profile_form()
        return await super().get_options_form()

    def run_options_from_form(self, form_data):
        if self.profiles:
            return {"profile": (form_data.get("profile") or [""])[0]}
        return super().run_options_from_form(form_data)

    def options_from_query(self, query_data):
        if self.profiles:
            return {"profile": query_data.get("profile", "")}
        return super().options_from_query(query_data)

    def chosen_profile(self):
        """The profile of this start: the one in user_options (refused with a clear message when unknown or
        not allowed to this user), else the first the user may choose; None without profiles."""
        if not self.profiles:
            return None
        allowed = self.allowed_profiles()
        name = (self.user_options or {}).get("profile")
        if name:
            found = [pr for pr in self.profiles if pr["name"] == name]
            if not found or found[0] not in allowed:
                self.forget_choice()
            if not found:
                raise refusal(400, "hubops: there is no profile %r; choose one of %s"
                                    % (name, ", ".join(pr["name"] for pr in allowed) or "none"))
            if found[0] not in allowed:
                raise refusal(403, "hubops: profile %r is for the groups %s, and %s is in none of them"
                                    % (name, ", ".join(found[0]["groups"]), self.user.name))
            return found[0]
        if not allowed:
            raise refusal(403, "hubops: no profile is open to %s (each is for groups the user is not in); "
                                "ask an admin to add you to one" % self.user.name)
        return allowed[0]

    def forget_choice(self) -> None:
        """A refused choice is not kept as the default of the user's next start (JupyterHub starts a server
        with the last options when none are given: the user would be refused again and again, with no
        spawn page to choose another when only one profile is open to them)."""
        orm_spawner = getattr(self, "orm_spawner", None)
        if orm_spawner is not None and (orm_spawner.user_options or {}).get("profile") == self.user_options.get("profile"):
            orm_spawner.user_options = {}  # committed with the hub's cleanup of the failed start

    def apply_profile(self) -> None:
        """Set this start's image and limits from the chosen profile (placement, generic resources and the
        profile's label go onto the service in profile_service)."""
        pr = self._profile = self.chosen_profile()
        if pr is None:
            return
        self.image = pr.get("image") or self.image
        for key in ("mem_limit", "cpu_limit", "mem_guarantee", "cpu_guarantee"):
            setattr(self, key, pr.get(key))
        self.log.info("hubops: %s starts profile %s (image %s)", self.user.name, pr["name"], self.image)

    def profile_service(self, create_kwargs: dict) -> dict:
        """The new service's placement constraints, generic resource reservations and profile label."""
        pr = self._profile
        if pr is None:
            return create_kwargs
        tt = create_kwargs["task_template"]
        if pr.get("constraints"):
            placement = tt.setdefault("Placement", {})
            placement["Constraints"] = list(placement.get("Constraints") or []) + [
                c for c in pr["constraints"] if c not in (placement.get("Constraints") or [])]
        if pr.get("generic_resources"):
            reservations = tt.setdefault("Resources", {}).setdefault("Reservations", {})
            reservations["GenericResources"] = [{"DiscreteResourceSpec": {"Kind": kind, "Value": int(n)}}
                                                for kind, n in sorted(pr["generic_resources"].items())]
        create_kwargs["labels"] = dict(create_kwargs.get("labels") or {}, **{PROFILE_LABEL: pr["name"]})
        tt.setdefault("ContainerSpec", {}).setdefault("Labels", {})[PROFILE_LABEL] = pr["name"]
        return create_kwargs

    def refuse_when_full(self, task: dict) -> None:
        """With when_full 'refuse': a task Swarm cannot place for want of a free generic resource ends the
        spawn with a message that says so (with 'wait', the task waits until one frees)."""
        pr = self._profile
        if not pr or not pr.get("generic_resources") or pr.get("when_full", "refuse") != "refuse":
            return
        status = task.get("Status") or {}
        why = " ".join(str(status.get(k) or "") for k in ("Err", "Message"))
        if status.get("State") == "pending" and any(s in why for s in NO_ROOM_SIGNS):
            wanted = ", ".join("%s %s" % (n, kind) for kind, n in sorted(pr["generic_resources"].items()))
            raise refusal(
                503, "hubops: profile %s needs %s, and no node has one free right now (all in use by other "
                "servers); try again later, or choose another profile. Swarm: %s" % (pr["name"], wanted, why.strip()))

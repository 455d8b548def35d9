"""Orbax checkpoints under DIR/checkpoints/<step>/: the train state and the data iterator, saved together.

The grain iterator's state lives in the same checkpoint as the model, so a resumed run reads exactly the
batches an uninterrupted run would have read: grain's handler writes data/process_<i>-of-<n>.json, one file
per process; restoring reads them all, so that a run on another number of processes resumes at the same
place in the global data order (pipeline.TrainIterator).
"""

import glob
import json
import os
import re

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from vlm_jax.errors import UserError


_ARRAYS_REGISTERED = False


def _single_process_arrays() -> None:
  """On one process, orbax's replica-parallel saving (each replica of a replicated array writes a slice of it)
  only costs: every replica's slice is a small program compiled once per shape and device on the first save
  (88 of them, ~5 s, for a tiny model on 8 CPU devices), and the same process writes all of them anyway. Across
  processes it spreads the writing over the hosts, so there it stays on."""
  global _ARRAYS_REGISTERED
  if jax.process_count() == 1 and not _ARRAYS_REGISTERED:  # once: orbax warns on each override
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False),
                                            override=True)
    _ARRAYS_REGISTERED = True


class Checkpoints:

  def __init__(self, workdir: str, keep: int):
    _single_process_arrays()
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self) -> list:
    """Committed checkpoints only: orbax writes into a temporary directory and renames it when complete,
    so a save cut short by a kill is never listed here."""
    self.manager.reload()
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator) -> None:
    args = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**args), force=True)

  def restore(self, step: int, target_state, data_iterator=None):
    """Restores `step` onto the shardings of `target_state`; advances `data_iterator` in place (from the
    states of all the processes that saved it, see read_data_states)."""
    if data_iterator is not None:
      states = read_data_states(os.path.join(self.directory, str(step), "data"))
    state = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_state)))["state"]
    if data_iterator is not None:
      data_iterator.restore(states)
    return state

  def saved_params(self, step: int):
    """The nested dict of parameter names (leaves: array metadata) of checkpoint `step`, nothing read."""
    with ocp.StandardCheckpointer() as reader:
      metadata = reader.metadata(os.path.join(self.directory, str(step), "state")).item_metadata
    return getattr(metadata, "tree", metadata)["params"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def read_data_states(directory: str) -> dict:
  """{(process_index, process_count): the iterator state that process saved} from a checkpoint's data/
  folder (grain's layout, process_<i>-of-<n>.json); ValueError if it holds none."""
  states = {}
  for path in glob.glob(os.path.join(directory, "process_*-of-*.json")):
    match = re.fullmatch(r"process_(\d+)-of-(\d+)\.json", os.path.basename(path))
    if match:
      with open(path) as f:
        states[int(match[1]), int(match[2])] = json.load(f)
  if not states:
    raise ValueError(f"no data iterator state in {directory}")
  return states


def read_params(workdir: str):
  """(step, params as numpy arrays) of the latest checkpoint in a workdir: only the parameters are read,
  not the optimizer state or the data iterator (for inference, and for initialising another run)."""
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  if not os.path.isdir(directory):
    raise UserError(f"no checkpoints in {directory}; train that run first")
  # The state was saved whole (StandardSave); a PyTree handler can restore a part of it.
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add("state", ocp.args.PyTreeRestore, ocp.PyTreeCheckpointHandler)
  options = ocp.CheckpointManagerOptions(create=False, read_only=True, save_interval_steps=0)
  with ocp.CheckpointManager(directory, options=options, handler_registry=registry) as manager:
    step = manager.latest_step()
    if step is None:
      raise UserError(f"no checkpoint in {directory}; train that run first")
    saved = manager.item_metadata(step)["state"]
    params = getattr(saved, "tree", saved)["params"]
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), params)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": params}, restore_args={"params": as_numpy}, partial_restore=True)))
  return step, restored["state"]["params"]

"""
    LibCluster.PTools

PTools.jl's names over LibCluster (`using LibCluster.PTools` in place of
`using PTools`, with `using LibCluster.API` in place of `using Distributed`):

- `WorkerSet(pids, mode)` with `WS_MODE_RR` / `WS_MODE_FF`, and
  `remotecall`, `remotecall_fetch`, `remotecall_wait` on it (methods of
  LibCluster's, in Distributed's argument order and in PTools' own);
- queued tasks: `WorkerTask`, `QueuedWorkerTask(task, method, callback,
  target)`, `prep_remotes`, `num_remotes`, `execute_worker_task`,
  `queue_worker_task`, `dequeue_worker_task`, `set_priorities`;
- shared memory: `ShmCfg(name, T, dims)`, `pmap_shm_create`, `unlink_shm`,
  and the cleaner of crashed runs' segments, `shm_orphans` and
  `remove_shm_orphans`;
- server tasks: `start_stasks`, `count_stasks`, `pmap_stasks`, `stop_stasks`;
- fork: `pfork(n, f, args...)` and `pfork_shm` (children writing into shared
  output arrays), failed children reported as `ForkChildError`s in a
  `PForkError`.

See the PTools section of the package README for what differs.
"""
module PTools

import ..LibCluster
import Random, Mmap
import ..LibCluster: remotecall, remotecall_fetch, remotecall_wait
using ..LibCluster: CAPI, myid, procs, workers, context, check_call, RemoteException,
                    ProcessExitedException, Future, library_exception, park_until_ready, encode_call,
                    decode_reply, CALL_FN

include("workerset.jl")     # WorkerSet, WS_MODE_RR / WS_MODE_FF
include("queuedtasks.jl")   # QueuedWorkerTask & co over cluster_taskqueue
include("shm.jl")           # ShmCfg, pmap_shm_create, unlink_shm, orphans, over cluster_shm
include("stasks.jl")        # server tasks: start_stasks, pmap_stasks, stop_stasks
include("pfork.jl")         # pfork, pfork_shm over cluster_pfork

end # module PTools

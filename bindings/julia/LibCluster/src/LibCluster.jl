"""
    LibCluster

The Distributed.jl API (`addprocs`, `remotecall`, `@spawnat`, `@everywhere`,
`Future`...) over libcluster, through `ccall`. Workers are Julia processes
running [`LibCluster.serve`](@ref); values and functions travel by
`Serialization`.

Layout: `capi.jl` is the only file that calls C (constants, structs, one
wrapper per function, errors from `cluster_last_error`); each concept above
it has its own file.

Its Distributed-named API is not exported (so that `using Distributed,
LibCluster` keeps Distributed's names unqualified): call it qualified
(`LibCluster.remotecall`), or `using LibCluster.API` to have the names.
"""
module LibCluster

using Serialization
using Serialization: AbstractSerializer, Serializer
using FileWatching: FDWatcher
import Serialization: serialize, deserialize

include("capi.jl")
using .CAPI: ClusterError

include("errors.jl")        # RemoteException, ProcessExitedException, status -> exception
include("runtime.jl")       # init, event loop (cluster_poll), shutdown
include("tls.jl")           # init's tls values, connection_encrypted
include("fastwire.jl")      # compact encoding of common calls and values
include("wire.jl")          # payload formats, Main globals shipped with closures
include("futures.jl")       # Future: isready / wait / fetch, passing futures on
include("membership.jl")    # myid, procs..., addprocs, rmprocs, interrupt, lifecycle callbacks
include("launchers.jl")     # addprocs(machines) over SSH, SlurmManager
include("remotecall.jl")    # remotecall & co, calls by name with raw bytes
include("channels.jl")      # RemoteChannel
include("serve.jl")         # incoming calls as tasks, worker serve loop
include("pools.jl")         # WorkerPool, CachingPool, default_worker_pool, functions cached on workers
include("pmap.jl")          # pmap over the library's pmap engine
include("distributed_for.jl")  # @distributed, splitrange
include("macros.jl")        # @spawnat, @spawn, @fetch, @fetchfrom, @everywhere
include("ptools/PTools.jl")  # LibCluster.PTools: PTools.jl's WorkerSet and queued tasks
include("clusterdicts/ClusterDicts.jl")  # LibCluster.ClusterDicts: GlobalDict, DistributedDict
include("clusterutils/ClusterUtils.jl")  # LibCluster.ClusterUtils: sow/reap, topology, message dicts, save/load
include("precompile.jl")    # compiling ahead: a workload, precompile directives, warm-up

# Only LibCluster's own names are exported: the Distributed-named API is
# used qualified (`LibCluster.remotecall`) or brought in with
# `using LibCluster.API`, so that `using Distributed, LibCluster` leaves every
# unqualified name to Distributed.
export ClusterError, addprocs_exec, remotecall_raw, remotecall_fetch_raw, remote_do_raw

"""
    LibCluster.API

Distributed's names over LibCluster, exported: after `using LibCluster.API`,
`addprocs`, `remotecall_fetch`, `@everywhere`, `Future`... are LibCluster's.
Do not combine with `using Distributed` in the same module (the names would
clash): there, use `LibCluster.remotecall` & co. qualified.
"""
module API
import ..LibCluster: addprocs, rmprocs, myid, nprocs, nworkers, procs, workers, other_procs, other_workers, cluster_cookie,
       remotecall, remotecall_fetch, remotecall_wait, remote_do, remotecall_eval,
       Future, RemoteChannel, AbstractRemoteRef, RemoteException, ProcessExitedException,
       @spawnat, @spawn, @fetch, @fetchfrom, @everywhere, interrupt,
       WorkerState, WorkerState_terminated, WorkerState_exterminated,
       add_worker_starting_callback, add_worker_started_callback,
       add_worker_exiting_callback, add_worker_exited_callback,
       remove_worker_starting_callback, remove_worker_started_callback,
       remove_worker_exiting_callback, remove_worker_exited_callback,
       ClusterError, addprocs_exec, remotecall_raw, remotecall_fetch_raw, remote_do_raw,
       AbstractWorkerPool, WorkerPool, CachingPool, default_worker_pool, clear!, pmap, remote, @distributed,
       ClusterManager, SlurmManager
export addprocs, rmprocs, myid, nprocs, nworkers, procs, workers, other_procs, other_workers, cluster_cookie,
       remotecall, remotecall_fetch, remotecall_wait, remote_do, remotecall_eval,
       Future, RemoteChannel, AbstractRemoteRef, RemoteException, ProcessExitedException,
       @spawnat, @spawn, @fetch, @fetchfrom, @everywhere, interrupt,
       WorkerState, WorkerState_terminated, WorkerState_exterminated,
       add_worker_starting_callback, add_worker_started_callback,
       add_worker_exiting_callback, add_worker_exited_callback,
       remove_worker_starting_callback, remove_worker_started_callback,
       remove_worker_exiting_callback, remove_worker_exited_callback,
       ClusterError, addprocs_exec, remotecall_raw, remotecall_fetch_raw, remote_do_raw,
       AbstractWorkerPool, WorkerPool, CachingPool, default_worker_pool, clear!, pmap, remote, @distributed,
       ClusterManager,
       SlurmManager    # LibCluster's (SlurmClusterManager.jl's use), not Distributed's
end

"Path of the libcluster library in use."
library_path() = CAPI.LIB_PATH[]

"Version of the libcluster library in use."
library_version() = CAPI.library_version()

function __init__()
    CAPI.load_library!()
    init_handlers!()
end

end # module

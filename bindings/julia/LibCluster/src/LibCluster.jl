"""
    LibCluster

The Distributed.jl API (`addprocs`, `remotecall`, `@spawnat`, `@everywhere`,
`Future`...) over libcluster, through `ccall`. Workers are Julia processes
running [`LibCluster.serve`](@ref); values and functions travel by
`Serialization`.

Layout: `capi.jl` is the only file that calls C (constants, structs, one
wrapper per function, errors from `cluster_last_error`); each concept above
it has its own file.

With `using Distributed, LibCluster` both modules export the same names:
qualify them (`LibCluster.remotecall`, `Distributed.remotecall`), or load one
of the two with `import` only.
"""
module LibCluster

using Serialization
using Serialization: AbstractSerializer, Serializer
import Serialization: serialize, deserialize

include("capi.jl")
using .CAPI: ClusterError

include("errors.jl")        # RemoteException, ProcessExitedException, status -> exception
include("runtime.jl")       # init, event loop (cluster_poll), shutdown
include("fastwire.jl")      # compact encoding of common calls and values
include("wire.jl")          # payload formats, Main globals shipped with closures
include("futures.jl")       # Future: isready / wait / fetch, passing futures on
include("membership.jl")    # myid, procs..., addprocs, rmprocs, interrupt, lifecycle callbacks
include("remotecall.jl")    # remotecall & co, calls by name with raw bytes
include("serve.jl")         # incoming calls as tasks, worker serve loop
include("macros.jl")        # @spawnat, @spawn, @fetch, @fetchfrom, @everywhere

# The Distributed names.
export addprocs, rmprocs, myid, nprocs, nworkers, procs, workers, other_procs, other_workers,
       remotecall, remotecall_fetch, remotecall_wait, remote_do, remotecall_eval,
       Future, AbstractRemoteRef, RemoteException, ProcessExitedException,
       @spawnat, @spawn, @fetch, @fetchfrom, @everywhere, interrupt,
       WorkerState, WorkerState_terminated, WorkerState_exterminated,
       add_worker_starting_callback, add_worker_started_callback,
       add_worker_exiting_callback, add_worker_exited_callback,
       remove_worker_starting_callback, remove_worker_started_callback,
       remove_worker_exiting_callback, remove_worker_exited_callback
# LibCluster's own.
export ClusterError, addprocs_exec, remotecall_raw, remotecall_fetch_raw, remote_do_raw

include("precompile.jl")

"Path of the libcluster library in use."
library_path() = CAPI.LIB_PATH[]

"Version of the libcluster library in use."
library_version() = CAPI.library_version()

function __init__()
    CAPI.load_library!()
    CAPI.init_trampoline!()
    init_handlers!()
end

end # module

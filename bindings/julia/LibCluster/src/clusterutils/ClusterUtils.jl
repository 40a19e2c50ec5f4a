"""
    LibCluster.ClusterUtils

ClusterUtils.jl's names over LibCluster (`using LibCluster.ClusterUtils` in
place of `using ClusterUtils`, with `using LibCluster.API` in place of
`using Distributed`):

- remote variables: `sow` (bind a global on processes: a value shipped, or
  an expression evaluated there; slices and keys assign into what is
  there), `reap` (evaluate on processes, `Dict(pid => value)`),
  `reaprefs` (the same as Futures), `stitch` (the parts concatenated in
  ascending pid order), `Doable`;
- topology: `describepids` (processes grouped by host, from the host names
  that travel with membership), `localpids`, `invtopology`, `chunkit`,
  `broadcast_shared` (one shared-memory array per host, bound on each of
  its processes);
- messages: `MessageDict`, `swapmsgs` (an all-gather of each participant's
  own entry, over libcluster's all-gather collective), `collectmsgs`;
- storage: `save`, `load` (libcluster's checksummed container, written
  atomically), `dictify`, `lookup`, `filterpaths`;
- `@timeit reps expr`.

See the ClusterUtils section of the package README for what differs.
"""
module ClusterUtils

using Serialization
import ..LibCluster
using ..LibCluster: CAPI, context, myid, procs, workers, remotecall, remotecall_fetch, remotecall_wait,
                    Future, RemoteException, ProcessExitedException, library_exception, run_op
using ..LibCluster.PTools: PTools

export lookup, filterpaths, dictify, save, load, @timeit,
       describepids, localpids, invtopology, chunkit, broadcast_shared,
       Doable, sow, reap, reaprefs, stitch,
       MessageDict, collectmsgs, swapmsgs

include("remotevars.jl")    # Doable, sow, reap, reaprefs, stitch
include("topology.jl")      # describepids, localpids, invtopology, chunkit, broadcast_shared
include("messages.jl")      # MessageDict, swapmsgs, collectmsgs
include("storage.jl")       # save, load, dictify, lookup, filterpaths
include("timeit.jl")        # @timeit

end # module ClusterUtils

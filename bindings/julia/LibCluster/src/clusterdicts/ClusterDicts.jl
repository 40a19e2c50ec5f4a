"""
    LibCluster.ClusterDicts

ClusterDicts.jl's names over LibCluster (`using LibCluster.ClusterDicts` in
place of `using ClusterDicts`, with `using LibCluster.API` in place of
`using Distributed`), over libcluster's dict service (`cluster_dict_*`):

- `GlobalDict` (every member holds every key, members read their own copy)
  and `DistributedDict` (each key on the members its hash picks, with
  `replication` copies), both `AbstractDict{K,V}`, made with
  `(pids = PidsWorkers(); name, ktype = Any, vtype = Any)` or
  `(pids::Array; ...)`;
- the member sets `PidsAll()`, `PidsWorkers()`, `Pids(ids)`;
- `ValueF(f)`: a value computed by `f()` where it is stored;
- `localpart(d)` (what this process stores) and `local_dicts()` (the dicts
  this process holds state for).

See the ClusterDicts section of the package README for what differs.
"""
module ClusterDicts

using Serialization
using Serialization: AbstractSerializer
import Serialization: serialize, deserialize

import ..LibCluster
using ..LibCluster: CAPI, context, remotecall_fetch, procs, workers, library_exception,
                    ProcessExitedException, RemoteException, fast_value, write_value, serialize_value,
                    TAG_OK, TAG_OK_FAST, decode_element, wait_channel_future

export GlobalDict, DistributedDict, Pids, PidsAll, PidsWorkers, ValueF, localpart, local_dicts

include("pids.jl")          # PidsAll, PidsWorkers, Pids
include("dicts.jl")         # the two types: making, opening, passing on, encoding, waiting
include("operations.jl")    # the AbstractDict functions, ValueF, localpart, local_dicts

end # module ClusterDicts

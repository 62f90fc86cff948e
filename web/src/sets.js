// Model sets on the page: a projector (an mmproj*.gguf) dropped with its model goes to the server as one set, so
// both are installed together as models/<set>/ (tus metadata `set`: the folder, `set_size`: how many uploads).

const SHARD = /^(.+)-(\d{5})-of-(\d{5})\.gguf$/i

/** llama-server takes a file whose name holds "mmproj", in a model's folder, as that model's projector. */
export const isProjector = (name) => (name || '').includes('mmproj')

const baseName = (name) => name.replace(/\.gguf$/i, '')
const words = (name) => baseName(name).toLowerCase().replace(/mmproj/g, '').split(/[^a-z0-9]+/).filter(Boolean)

/** How alike a projector's name is to a model's: the words they share ("mmproj-Qwen2-VL-2B-f16" ~ "Qwen2-VL-2B-Q4_K_M"). */
function likeness(projector, model) {
  const theirs = new Set(words(model))
  return words(projector).filter((word) => theirs.has(word)).length
}

/** The one name most like the projector's among `names`, or null when none is, or two are equally. */
function mostLike(projector, names) {
  const ranked = [...names].map((name) => [likeness(projector, name), name]).sort((a, b) => b[0] - a[0])
  if (!ranked.length || ranked[0][0] === 0 || ranked[1]?.[0] === ranked[0][0]) return null
  return ranked[0][1]
}

/**
 * The sets a batch of files makes: [{ name, files: [{ id, name }] }] for each projector paired with its model
 * (one file, or every shard of one split model), and `lone`, the projectors no model goes with.
 * One model and one projector always pair; with several, each projector takes the model whose name is most
 * like its own. A projector with no model in the batch joins the installed model (`installed`: llama-server's
 * ids of the models directory's entries) whose name is most like its own: a set of that projector alone, which
 * the server turns into the model's folder. One that no model resembles more than the others stays lone.
 */
export function planSets(files, installed = []) {
  const projectors = files.filter((file) => isProjector(file.name))
  const models = new Map() // set name -> files of that model
  for (const file of files) {
    if (isProjector(file.name)) continue
    const shard = SHARD.exec(file.name)
    const name = shard ? shard[1] : baseName(file.name)
    models.set(name, [...(models.get(name) || []), file])
  }
  const sets = []
  const lone = []
  const free = new Set(models.keys())
  for (const projector of projectors) {
    const only = free.size === 1 && projectors.length === 1
    const name = only ? [...free][0] : mostLike(projector.name, free)
    if (name !== null) {
      free.delete(name)
      sets.push({ name, files: [...models.get(name), projector] })
      continue
    }
    const joins = models.size ? null : mostLike(projector.name, installed)
    if (joins !== null && !sets.some((set) => set.name === joins)) sets.push({ name: joins, files: [projector] })
    else lone.push(projector)
  }
  return { sets, lone }
}

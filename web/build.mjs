// Bundles src/ into dist/: index.html, app.js and app.css (Uppy's CSS included). No CDN at run time.
import { createHash } from 'node:crypto'
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const src = (path) => fileURLToPath(new URL(`src/${path}`, import.meta.url))
const distDir = fileURLToPath(new URL('dist/', import.meta.url))

await rm(distDir, { recursive: true, force: true })
await mkdir(distDir, { recursive: true })

const result = await build({
  entryPoints: { app: src('main.js') },
  outdir: distDir,
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['chrome105', 'firefox110', 'safari16'],
  legalComments: 'eof',
  charset: 'utf8',
  write: false,
  logLevel: 'warning',
})

// Cache-busting: index.html names each asset with a hash of its content.
const assets = {}
for (const file of result.outputFiles) {
  const name = file.path.slice(file.path.lastIndexOf('/') + 1)
  await writeFile(file.path, file.contents)
  assets[name] = { hash: createHash('sha256').update(file.contents).digest('hex').slice(0, 10), size: file.contents.length }
}
for (const name of ['app.js', 'app.css']) {
  if (!assets[name]) throw new Error(`build produced no ${name}`)
}

let html = await readFile(src('index.html'), 'utf8')
for (const [name, { hash }] of Object.entries(assets)) {
  html = html.replace(`"${name}"`, `"${name}?v=${hash}"`)
}
await writeFile(`${distDir}index.html`, html)

const kB = (n) => `${(n / 1024).toFixed(1)} kB`
console.log(Object.entries(assets).map(([name, { size }]) => `dist/${name} ${kB(size)}`).join(', '))

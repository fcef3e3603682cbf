-- pie-lsp in Neovim 0.12+: ghost-text completion through the native vim.lsp.inline_completion.
--
-- Try it:   nvim -u editor_configs/neovim/pie_lsp.lua some_file.py
-- Keep it:  copy this file to ~/.config/nvim/plugin/pie_lsp.lua (or `dofile()` it from init.lua).
--
-- Optional globals, set before this file runs (e.g. `nvim --cmd "let g:pie_lsp_cmd = [...]"`):
--   g:pie_lsp_cmd        the server command (default: { 'pie-lsp' }, e.g. { 'pie-lsp', '--model', '/path' })
--   g:pie_lsp_filetypes  the filetypes to attach to
--   g:pie_lsp_settings   the "pieLsp" settings table (see `pie-lsp --help`)
--
-- Keys in insert mode: <Tab> accepts the suggestion (or inserts a tab), <M-]> / <M-[> cycle.
-- :PieLspStats shows the server's per-document cache statistics.

if vim.fn.has('nvim-0.12') == 0 or not vim.lsp.inline_completion then
  vim.notify('pie-lsp needs Neovim 0.12 or newer (vim.lsp.inline_completion)', vim.log.levels.WARN)
  return
end

local settings = vim.g.pie_lsp_settings or {
  -- Neovim already waits 200 ms after the last keystroke before it asks.
  debounceMs = 0,
  maxNewTokens = 64,
}

vim.lsp.config('pie_lsp', {
  cmd = vim.g.pie_lsp_cmd or { 'pie-lsp' },
  filetypes = vim.g.pie_lsp_filetypes or {
    'python', 'lua', 'javascript', 'typescript', 'rust', 'go', 'c', 'cpp', 'java', 'sh',
  },
  root_markers = { '.git', 'pyproject.toml', 'setup.py', 'package.json', 'Cargo.toml', 'go.mod' },
  init_options = { pieLsp = settings },
  settings = { pieLsp = settings },
})
vim.lsp.enable('pie_lsp')
vim.lsp.inline_completion.enable()

vim.keymap.set('i', '<Tab>', function()
  if not vim.lsp.inline_completion.get() then
    return '<Tab>'
  end
end, { expr = true, desc = 'pie-lsp: accept the inline completion' })
vim.keymap.set('i', '<M-]>', function()
  vim.lsp.inline_completion.select({ count = 1 })
end, { desc = 'pie-lsp: next inline completion' })
vim.keymap.set('i', '<M-[>', function()
  vim.lsp.inline_completion.select({ count = -1 })
end, { desc = 'pie-lsp: previous inline completion' })

vim.api.nvim_create_user_command('PieLspStats', function()
  local client = vim.lsp.get_clients({ name = 'pie_lsp', bufnr = 0 })[1]
  if not client then
    vim.notify('pie-lsp is not attached to this buffer', vim.log.levels.WARN)
    return
  end
  client:exec_cmd({ title = 'pie-lsp stats', command = 'pie-lsp.stats', arguments = { vim.uri_from_bufnr(0) } }, { bufnr = 0 }, function(err, result)
    if err then
      vim.notify('pie-lsp.stats failed: ' .. err.message, vim.log.levels.ERROR)
    else
      vim.print(result)
    end
  end)
end, { desc = 'Show pie-lsp cache statistics for this buffer' })
